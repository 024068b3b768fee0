/* One part's baseline records paired with its new file's records by their hashes (see
cutover/record_pairs.py).

Contract: pair_records reads nb baseline and nn new records' two 64-bit hashes, each at a stride in bytes
from its first (as numpy lays out a structured array's fields), and sets base_paired[j] and
new_paired[i] to 1 when baseline record j and new record i have both hashes equal, 0 otherwise. It
returns how many pairs it found; or -1 when two baseline records are equal, or one baseline record equals
two new ones (the flags are then not to be used); or -2 when it could not allocate its table. Two new
records equal to each other and to no baseline record are both left unpaired.

One pass over each side through a table of the baseline records (open addressing, at most half full):
linear in the records where numpy's sort is not. A record's slot comes from its second hash: the first
chose the part, so its low bits are alike within one. The hashes are seeded by a secret drawn for each
baseline, so no file can be written to crowd the table. No state; Python's lock is released around the
call (ctypes), so parts are paired in parallel.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SEEN_TWICE -1
#define NO_MEMORY -2

static inline uint64_t hash_at(const uint8_t *first, int64_t stride, int64_t i)
{
    uint64_t h;
    memcpy(&h, first + i * stride, 8);
    return h;
}

/* Fibonacci hashing: the top bits of the product spread any key over the table */
static inline uint64_t slot_of(uint64_t h2, int bits)
{
    return (h2 * 0x9E3779B97F4A7C15ULL) >> (64 - bits);
}

int64_t pair_records(const uint8_t *base_h1, const uint8_t *base_h2, int64_t base_stride, int64_t nb,
                     const uint8_t *new_h1, const uint8_t *new_h2, int64_t new_stride, int64_t nn,
                     uint8_t *base_paired, uint8_t *new_paired)
{
    int bits = 1;
    while (((int64_t)1 << bits) < 2 * nb)
        bits++;
    uint64_t mask = ((uint64_t)1 << bits) - 1;
    int64_t *slots = calloc((size_t)mask + 1, sizeof *slots); /* a baseline record's index + 1; 0: free */
    if (!slots)
        return NO_MEMORY;
    memset(base_paired, 0, (size_t)nb);
    memset(new_paired, 0, (size_t)nn);

    for (int64_t j = 0; j < nb; j++) {
        uint64_t h1 = hash_at(base_h1, base_stride, j), h2 = hash_at(base_h2, base_stride, j);
        for (uint64_t s = slot_of(h2, bits);; s = (s + 1) & mask) {
            int64_t k = slots[s] - 1;
            if (k < 0) {
                slots[s] = j + 1;
                break;
            }
            if (hash_at(base_h1, base_stride, k) == h1 && hash_at(base_h2, base_stride, k) == h2) {
                free(slots);
                return SEEN_TWICE;
            }
        }
    }

    int64_t pairs = 0;
    for (int64_t i = 0; i < nn; i++) {
        uint64_t h1 = hash_at(new_h1, new_stride, i), h2 = hash_at(new_h2, new_stride, i);
        for (uint64_t s = slot_of(h2, bits);; s = (s + 1) & mask) {
            int64_t k = slots[s] - 1;
            if (k < 0)
                break;
            if (hash_at(base_h1, base_stride, k) == h1 && hash_at(base_h2, base_stride, k) == h2) {
                if (base_paired[k]) {
                    free(slots);
                    return SEEN_TWICE;
                }
                base_paired[k] = new_paired[i] = 1;
                pairs++;
                break;
            }
        }
    }
    free(slots);
    return pairs;
}
