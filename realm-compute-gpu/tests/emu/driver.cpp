// Runs one of Realm's CUDA kernels under emu.h: `driver KERNEL ARGS...`
// reads its arrays from files, writes its output to a file. Built and run
// by tests/emulated.rs, which compares the output with the CPU backend.
#include "emu.h"

#include "../../kernels/add_rms_norm.cu"
#include "../../kernels/decode_attention.cu"
#include "../../kernels/gated.cu"
#include "../../kernels/prefill_attention.cu"
#include "../../kernels/rope_angles.cu"
#include "../../kernels/rope_store.cu"

#include <cstdio>
#include <cstdlib>
#include <string>

template <class T>
static std::vector<T> load(const char *path) {
  std::vector<T> v;
  FILE *f = std::fopen(path, "rb");
  if (!f) {
    std::fprintf(stderr, "cannot open %s\n", path);
    std::exit(2);
  }
  T x;
  while (std::fread(&x, sizeof x, 1, f) == 1) v.push_back(x);
  std::fclose(f);
  return v;
}

static void store(const char *path, const std::vector<float> &v) {
  FILE *f = std::fopen(path, "wb");
  if (!f || std::fwrite(v.data(), sizeof(float), v.size(), f) != v.size()) {
    std::fprintf(stderr, "cannot write %s\n", path);
    std::exit(2);
  }
  std::fclose(f);
}

// Q8_1 blocks for `values` values, when the call names a file for them.
static std::vector<realm_block_q8_1> q8_blocks(int argc, int at, size_t values) {
  return std::vector<realm_block_q8_1>(argc > at ? values / 32 : 0);
}

static void store_q8(int argc, char **argv, int at, const std::vector<realm_block_q8_1> &b) {
  if (argc <= at) return;
  FILE *f = std::fopen(argv[at], "wb");
  if (!f || std::fwrite(b.data(), sizeof b[0], b.size(), f) != b.size()) {
    std::fprintf(stderr, "cannot write %s\n", argv[at]);
    std::exit(2);
  }
  std::fclose(f);
}

static realm_block_q8_1 *ptr(std::vector<realm_block_q8_1> &b) {
  return b.empty() ? nullptr : b.data();
}

static long num(const char *s) { return std::strtol(s, nullptr, 10); }

// Blocks in the matrix products' layout (both kinds, spare blocks
// included) for `rows` rows of `width`, when $EMU_MMQ names a file for
// them; filled with 0xa5 bytes, so that a byte the kernel does not write
// shows.
static std::vector<realm_block_mmq_ds4> mmq_buffer(uint32_t rows, uint32_t width) {
  if (!std::getenv("EMU_MMQ")) return {};
  const size_t padded = (width + MMQ_PAD - 1) / MMQ_PAD * MMQ_PAD;
  std::vector<realm_block_mmq_ds4> b(2 * ((size_t)rows * (padded / 128) + MMQ_SPARE));
  std::memset((void *)b.data(), 0xa5, b.size() * sizeof b[0]);
  return b;
}

static void store_mmq(const std::vector<realm_block_mmq_ds4> &b) {
  const char *path = std::getenv("EMU_MMQ");
  if (!path) return;
  FILE *f = std::fopen(path, "wb");
  if (!f || std::fwrite(b.data(), sizeof b[0], b.size(), f) != b.size()) {
    std::fprintf(stderr, "cannot write %s\n", path);
    std::exit(2);
  }
  std::fclose(f);
}

// The head norms' epsilon, as the tests' CPU references use it.
static const float NORM_EPS = 1e-6f;

// The values of the file $name names (a norm weight), or none.
static std::vector<float> env_floats(const char *name) {
  const char *f = std::getenv(name);
  return f ? load<float>(f) : std::vector<float>();
}

static const float *ptr_or_null(const std::vector<float> &v) { return v.empty() ? nullptr : v.data(); }

// A stride (or size) from the environment, for the strided cases.
static long long env_num(const char *name, long long otherwise) {
  const char *v = std::getenv(name);
  return v ? std::strtoll(v, nullptr, 10) : otherwise;
}
static float real(const char *s) { return std::strtof(s, nullptr); }

// The instance of an attention kernel for heads of up to `max_hd` values
// ("64", "128" or "256"; null for another).
template <class K>
static K *by_head(const std::string &max_hd, K *k64, K *k128, K *k256) {
  return max_hd == "64" ? k64 : max_hd == "128" ? k128 : max_hd == "256" ? k256 : nullptr;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  const std::string kernel = argv[1];
  if (kernel.rfind("decode_attention_", 0) == 0) {
    // q k v positions|- out rows n_heads n_kv_heads head_dim max_seq
    // row_stride scale softcap window pos_base cos|- sin|- n_dims neox [q8];
    // a row_stride of -N says: caches of N values, in the files in reverse
    // row order, named to the kernel one by one (its slot table)
    if (argc != 21 && argc != 22) return 2;
    auto q = load<float>(argv[2]);
    std::vector<uint32_t> pos;
    const bool device_positions = std::string(argv[5]) != "-";
    if (device_positions) pos = load<uint32_t>(argv[5]);
    const unsigned rows = num(argv[7]), n_heads = num(argv[8]);
    const int n_kv = num(argv[9]), hd = num(argv[10]), max_seq = num(argv[11]);
    const long long stride_arg = num(argv[12]);
    const bool by_slots = stride_arg < 0;
    const long long row_stride = by_slots ? 0 : stride_arg;
    const float scale = real(argv[13]), softcap = real(argv[14]);
    const int window = num(argv[15]);
    const uint32_t pos_base = num(argv[16]);
    std::vector<float> cos, sin;
    const bool rope = std::string(argv[17]) != "-";
    if (rope) cos = load<float>(argv[17]), sin = load<float>(argv[18]);
    const int n_dims = num(argv[19]), neox = num(argv[20]);
    const float *c = rope ? cos.data() : nullptr, *s = rope ? sin.data() : nullptr;
    std::vector<float> out(rows * n_heads * hd, -12345.0f);
    auto q8 = q8_blocks(argc, 21, out.size());
    const uint32_t *p = device_positions ? pos.data() : nullptr;
    // Row r's query at q + r * q_stride ($EMU_Q_STRIDE); $EMU_Q_NORM names
    // a file of the query heads' norm weight.
    const long long q_stride = env_num("EMU_Q_STRIDE", (long long)n_heads * hd);
    const auto q_norm = env_floats("EMU_Q_NORM");
    // Row r's cache is the (rows - 1 - r)-th in the files.
    auto table = [&](auto &k, auto &v) {
      SlotTable t{};
      for (unsigned r = 0; by_slots && r < rows; ++r) {
        t.k[r] = (unsigned long long)(k.data() + (rows - 1 - r) * -stride_arg);
        t.v[r] = (unsigned long long)(v.data() + (rows - 1 - r) * -stride_arg);
      }
      return t;
    };
    // $EMU_SPLITS: the keys split over that many blocks per row and head,
    // whose partial results the merge kernel then weighs.
    const unsigned splits = env_num("EMU_SPLITS", 1);
    std::vector<float> part(splits > 1 ? (size_t)rows * n_heads * splits * (hd + 2) : 0, NAN);
    float *part_ptr = splits > 1 ? part.data() : nullptr;
    // $EMU_NEW_K and $EMU_NEW_V name files of each row's new key and value
    // (rows of n_kv_heads * head_dim values, $EMU_NEW_K_STRIDE and
    // $EMU_NEW_V_STRIDE apart), which the kernel stores at the row's
    // position (the key normed with the weight $EMU_K_NORM names, if it
    // does, and rotated) and attends to; $EMU_CACHES, a prefix of files
    // (PREFIX.k and PREFIX.v, f32) the caches are written to afterwards.
    const auto new_k = env_floats("EMU_NEW_K"), new_v = env_floats("EMU_NEW_V");
    const auto k_norm = env_floats("EMU_K_NORM");
    const long long new_k_stride = env_num("EMU_NEW_K_STRIDE", (long long)n_kv * hd);
    const long long new_v_stride = env_num("EMU_NEW_V_STRIDE", (long long)n_kv * hd);
    auto mmq = mmq_buffer(rows, n_heads * hd);
    realm_block_mmq_ds4 *mmq_ptr = mmq.empty() ? nullptr : mmq.data();
    // The kernel's name says the cache's type and the largest head.
    auto launch = [&](auto kernel_fn, auto &k, auto &v) {
      emu_launch(kernel_fn, dim3{rows, n_heads, splits}, dim3{256, 1, 1}, q.data(), k.data(),
                 v.data(), p, out.data(), pos_base, (int)n_heads, n_kv, hd, max_seq, row_stride,
                 table(k, v), (int)by_slots, scale, softcap, window, c, s, n_dims, neox, ptr(q8),
                 mmq_ptr, q_stride, ptr_or_null(q_norm), NORM_EPS, part_ptr, ptr_or_null(new_k),
                 ptr_or_null(new_v), new_k_stride, new_v_stride, ptr_or_null(k_norm));
      if (splits > 1)
        emu_launch(decode_attention_merge, dim3{rows, n_heads, 1}, dim3{MERGE_THREADS, 1, 1},
                   part_ptr, p, pos_base, max_seq, out.data(), ptr(q8), mmq_ptr, (int)n_heads,
                   hd, (int)splits);
      if (const char *prefix = std::getenv("EMU_CACHES")) {
        std::vector<float> kf, vf;
        for (auto x : k) kf.push_back(to_f32(x));
        for (auto x : v) vf.push_back(to_f32(x));
        store((std::string(prefix) + ".k").c_str(), kf);
        store((std::string(prefix) + ".v").c_str(), vf);
      }
    };
    const std::string max_hd = kernel.substr(kernel.rfind('_') + 1);
    if (kernel.find("_f16_") != std::string::npos) {
      auto k = load<__half>(argv[3]), v = load<__half>(argv[4]);
      auto f = by_head(max_hd, decode_attention_f16_64, decode_attention_f16_128,
                       decode_attention_f16_256);
      if (!f) return 2;
      launch(f, k, v);
    } else {
      auto k = load<float>(argv[3]), v = load<float>(argv[4]);
      auto f = by_head(max_hd, decode_attention_f32_64, decode_attention_f32_128,
                       decode_attention_f32_256);
      if (!f) return 2;
      launch(f, k, v);
    }
    store(argv[6], out);
    store_q8(argc, argv, 21, q8);
    store_mmq(mmq);
  } else if (kernel.rfind("prefill_attention_", 0) == 0) {
    // q k v positions|- out rows n_heads n_kv_heads head_dim max_seq scale
    // softcap window pos_base cos|- sin|- n_dims neox, one cache for every
    // row; the kernel's name says the cache's type and the largest head
    if (argc != 20) return 2;
    auto q = load<float>(argv[2]);
    std::vector<uint32_t> pos;
    const bool device_positions = std::string(argv[5]) != "-";
    if (device_positions) pos = load<uint32_t>(argv[5]);
    const int rows = num(argv[7]);
    const unsigned n_heads = num(argv[8]);
    const int n_kv = num(argv[9]), hd = num(argv[10]), max_seq = num(argv[11]);
    const float scale = real(argv[12]), softcap = real(argv[13]);
    const int window = num(argv[14]);
    const uint32_t pos_base = num(argv[15]);
    std::vector<float> cos, sin;
    const bool rope = std::string(argv[16]) != "-";
    if (rope) cos = load<float>(argv[16]), sin = load<float>(argv[17]);
    const int n_dims = num(argv[18]), neox = num(argv[19]);
    const float *c = rope ? cos.data() : nullptr, *s = rope ? sin.data() : nullptr;
    std::vector<float> out(rows * n_heads * hd, -12345.0f);
    const uint32_t *p = device_positions ? pos.data() : nullptr;
    const long long q_stride = env_num("EMU_Q_STRIDE", (long long)n_heads * hd);
    const auto q_norm = env_floats("EMU_Q_NORM");
    const bool f16 = kernel.find("_f16_") != std::string::npos;
    const std::string max_hd = kernel.substr(kernel.rfind('_') + 1);
    // Rows a block: 4 warps of 4 rows, or of 2 for heads up to 256.
    const unsigned per_block = max_hd == "256" ? 8 : 16;
    const dim3 grid{(rows + per_block - 1) / per_block, n_heads, 1};
    auto mmq = mmq_buffer(rows, n_heads * hd);
    auto launch = [&](auto kernel_fn, auto &k, auto &v) {
      emu_launch(kernel_fn, grid, dim3{128, 1, 1}, q.data(), k.data(), v.data(), p, out.data(),
                 pos_base, (int)n_heads, n_kv, hd, max_seq, rows, scale, softcap, window, c, s,
                 n_dims, neox, q_stride, ptr_or_null(q_norm), NORM_EPS,
                 mmq.empty() ? nullptr : mmq.data());
    };
    if (f16) {
      auto k = load<__half>(argv[3]), v = load<__half>(argv[4]);
      auto f = by_head(max_hd, prefill_attention_f16_64, prefill_attention_f16_128,
                       prefill_attention_f16_256);
      if (!f) return 2;
      launch(f, k, v);
    } else {
      auto k = load<float>(argv[3]), v = load<float>(argv[4]);
      auto f = by_head(max_hd, prefill_attention_f32_64, prefill_attention_f32_128,
                       prefill_attention_f32_256);
      if (!f) return 2;
      launch(f, k, v);
    }
    store(argv[6], out);
    store_mmq(mmq);
  } else if (kernel == "rope_store_f32" || kernel == "rope_store_f16") {
    // cache k v positions cos sin out rows slots n_kv_heads head_dim
    // max_seq n_dims neox slot0 [by-slots]; the cache (keys, then values) is
    // written back as f32. With by-slots, the kernel gets no cache, only
    // each row's slot by address.
    if (argc != 17 && argc != 18) return 2;
    const bool by_slots = argc == 18;
    auto k = load<float>(argv[3]), v = load<float>(argv[4]);
    auto cos = load<float>(argv[6]), sin = load<float>(argv[7]);
    auto pos = load<uint32_t>(argv[5]);
    const unsigned rows = num(argv[9]), slots = num(argv[10]), n_kv = num(argv[11]);
    const int hd = num(argv[12]), max_seq = num(argv[13]), n_dims = num(argv[14]),
              neox = num(argv[15]), slot0 = num(argv[16]);
    const long long v_off = (long long)slots * n_kv * max_seq * hd;
    std::vector<float> out;
    const long long per_slot = (long long)n_kv * max_seq * hd;
    // Row r's key at k + r * k_stride, value at v + r * v_stride.
    const long long k_stride = env_num("EMU_K_STRIDE", (long long)n_kv * hd);
    const long long v_stride = env_num("EMU_V_STRIDE", (long long)n_kv * hd);
    // $EMU_K_NORM names a file of the key heads' norm weight; with
    // $EMU_SLOT_STEP 0, every row goes to slot0 (one sequence's chunk).
    const auto k_norm = env_floats("EMU_K_NORM");
    const int slot_step = env_num("EMU_SLOT_STEP", 1);
    auto table = [&](auto &cache) {
      SlotTable t{};
      for (unsigned r = 0; by_slots && r < rows; ++r) {
        t.k[r] = (unsigned long long)(cache.data() + (slot0 + r) * per_slot);
        t.v[r] = (unsigned long long)(cache.data() + v_off + (slot0 + r) * per_slot);
      }
      return t;
    };
    if (kernel == "rope_store_f32") {
      auto cache = load<float>(argv[2]);
      float *base = by_slots ? nullptr : cache.data();
      emu_launch(rope_store_f32, dim3{rows, n_kv, 1}, dim3{128, 1, 1}, base, k.data(), v.data(),
                 pos.data(), cos.data(), sin.data(), by_slots ? 0 : slot0, slot_step, (int)n_kv, hd,
                 max_seq,
                 n_dims, neox, by_slots ? 0 : v_off, table(cache), (int)by_slots, k_stride,
                 v_stride, ptr_or_null(k_norm), NORM_EPS);
      out = cache;
    } else {
      auto cache = load<__half>(argv[2]);
      __half *base = by_slots ? nullptr : cache.data();
      emu_launch(rope_store_f16, dim3{rows, n_kv, 1}, dim3{128, 1, 1}, base, k.data(), v.data(),
                 pos.data(), cos.data(), sin.data(), by_slots ? 0 : slot0, slot_step, (int)n_kv, hd,
                 max_seq,
                 n_dims, neox, by_slots ? 0 : v_off, table(cache), (int)by_slots, k_stride,
                 v_stride, ptr_or_null(k_norm), NORM_EPS);
      for (auto h : cache) out.push_back(__half2float(h));
    }
    store(argv[8], out);
  } else if (kernel == "rope_angles_f32") {
    // positions out n_dims inv_freqs(f64) freq_scale magnitude
    if (argc != 8) return 2;
    auto pos = load<uint32_t>(argv[2]);
    const uint32_t rows = pos.size();
    const int n_dims = num(argv[4]);
    const auto freqs = load<double>(argv[5]);
    if (freqs.size() != (size_t)(n_dims / 2) || freqs.size() > ROPE_PAIRS) return 2;
    InvFreqs inv = {};
    for (size_t i = 0; i < freqs.size(); ++i) inv.v[i] = freqs[i];
    std::vector<float> out(2 * rows * (n_dims / 2), -12345.0f);
    emu_launch(rope_angles_f32, dim3{rows, 1, 1}, dim3{128, 1, 1}, pos.data(), out.data(), rows,
               n_dims, inv, real(argv[6]), real(argv[7]));
    store(argv[3], out);
  } else if (kernel == "add_rms_norm_f32") {
    // x y w out rows width eps [q8]
    if (argc != 9 && argc != 10) return 2;
    auto x = load<float>(argv[2]), y = load<float>(argv[3]), w = load<float>(argv[4]);
    const unsigned rows = num(argv[6]), width = num(argv[7]);
    std::vector<float> out(2 * rows * width, -12345.0f);
    auto q8 = q8_blocks(argc, 9, rows * width);
    // $EMU_Y_NORM names a file of y's norm weight.
    const auto y_w = env_floats("EMU_Y_NORM");
    auto mmq = mmq_buffer(rows, width);
    emu_launch(add_rms_norm_f32, dim3{rows, 1, 1}, dim3{256, 1, 1}, x.data(), y.data(), w.data(),
               out.data(), rows, width, real(argv[8]), ptr(q8), ptr_or_null(y_w),
               mmq.empty() ? nullptr : mmq.data());
    store(argv[5], out);
    store_q8(argc, argv, 9, q8);
    store_mmq(mmq);
  } else if (kernel == "swiglu_f32" || kernel == "geglu_f32") {
    // gate up out [q8]
    if (argc != 5 && argc != 6) return 2;
    auto g = load<float>(argv[2]), u = load<float>(argv[3]);
    // n values in rows of width, row r at gate + r * gate_stride and
    // up + r * up_stride ($EMU_N, $EMU_WIDTH, $EMU_GATE_STRIDE,
    // $EMU_UP_STRIDE; contiguous without them).
    const uint32_t n = env_num("EMU_N", g.size());
    const uint32_t width = env_num("EMU_WIDTH", n);
    const long long gate_stride = env_num("EMU_GATE_STRIDE", width);
    const long long up_stride = env_num("EMU_UP_STRIDE", width);
    std::vector<float> out(n, -12345.0f);
    auto q8 = q8_blocks(argc, 5, n);
    // As the backend launches it: 1024 threads a block, enough blocks.
    const unsigned blocks = (n + 1023) / 1024;
    auto f = kernel == "swiglu_f32" ? swiglu_f32 : geglu_f32;
    auto mmq = mmq_buffer(n / width, width);
    emu_launch(f, dim3{blocks, 1, 1}, dim3{1024, 1, 1}, g.data(), u.data(), out.data(), n,
               ptr(q8), width, gate_stride, up_stride, mmq.empty() ? nullptr : mmq.data());
    store(argv[4], out);
    store_q8(argc, argv, 5, q8);
    store_mmq(mmq);
  } else {
    return 2;
  }
  return 0;
}
