#!/usr/bin/env python3
"""A layout for benchmarking mixtures of experts: a Qwen 3 MoE of
Qwen3-30B-A3B's proportions, smaller (8 layers, 1024 wide, 32 experts of
512, 8 a token, 16 query / 4 KV heads of 64, a 32,000-token vocabulary;
489M parameters), written with gguf-py as a skeleton of zero Q8_0 weights.
`realm synth SKELETON -o MODEL --matrix-type q4_k` fills it with seeded
weights; speed does not depend on their values.
Usage: python3 scripts/gen_moe_layout.py SKELETON.gguf
"""
import sys

import numpy as np

import llama_env

L, D, E, K, FF, H, KV, HD, V = 8, 1024, 32, 8, 512, 16, 4, 64, 32000


def main():
    llama_env.tools()
    import gguf
    w = gguf.GGUFWriter(sys.argv[1], "qwen3moe")
    w.add_block_count(L)
    w.add_context_length(4096)
    w.add_embedding_length(D)
    w.add_feed_forward_length(3 * D)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_key_length(HD)
    w.add_value_length(HD)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_expert_count(E)
    w.add_expert_used_count(K)
    w.add_expert_feed_forward_length(FF)
    # A byte-fallback SentencePiece vocabulary, as realm synth writes one.
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    toks += [f"\u2581t{i}" for i in range(len(toks), V)]
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([-float(i) for i in range(V)])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (V - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def tensor(name, shape, vector=False):
        # gguf-py takes numpy's order, ggml's reversed; Q8_0 as raw bytes.
        if vector:
            w.add_tensor(name, np.ones(list(reversed(shape)), dtype=np.float32))
        else:
            rows = list(reversed(shape[1:]))
            data = np.zeros(rows + [shape[0] // 32 * 34], dtype=np.uint8)
            w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    tensor("token_embd.weight", [D, V])
    for layer in range(L):
        b = f"blk.{layer}."
        tensor(b + "attn_norm.weight", [D], True)
        tensor(b + "attn_q.weight", [D, H * HD])
        tensor(b + "attn_k.weight", [D, KV * HD])
        tensor(b + "attn_v.weight", [D, KV * HD])
        tensor(b + "attn_output.weight", [H * HD, D])
        tensor(b + "attn_q_norm.weight", [HD], True)
        tensor(b + "attn_k_norm.weight", [HD], True)
        tensor(b + "ffn_norm.weight", [D], True)
        tensor(b + "ffn_gate_inp.weight", [D, E], True)
        tensor(b + "ffn_gate_exps.weight", [D, FF, E])
        tensor(b + "ffn_up_exps.weight", [D, FF, E])
        tensor(b + "ffn_down_exps.weight", [FF, D, E])
    tensor("output_norm.weight", [D], True)
    tensor("output.weight", [D, V])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
