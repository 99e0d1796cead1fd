// Each row's KV cache named by address, for kernels over a batch whose
// caches are slots of different blocks: one launch for every row, passed
// by value (so a recorded step holds it). Written for Realm's GPU backend
// (src/fused/slots.rs builds it).
#pragma once

// The most rows a table names.
#define SLOT_ROWS 32

// Row r's keys at k[r] and values at v[r], each [kv_heads, max_seq,
// head_dim] of the cache's element type.
struct SlotTable {
  unsigned long long k[SLOT_ROWS];
  unsigned long long v[SLOT_ROWS];
};
