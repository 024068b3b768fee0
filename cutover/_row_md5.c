/* The rows' canonical texts and their MD5s, in one pass over a batch's columns (see cutover/row_md5.py).

Contract: for each row, the text is its non-NULL fields joined by U+001F, then its NULL bitmasks, each a
decimal integer (cutover/digests.py): exactly what digests.source_sums builds with polars. The row's MD5
(OpenSSL's, passed in as a function pointer: this file needs no headers or libraries beyond libc) is
written as two big-endian 64-bit halves, as the hex digest read in two.

The columns come as Arrow C streams (polars' own export, no copy), one chunk each, all of one length:
UTF-8 views (polars' strings) or int64 (written in decimal); any other layout is refused. A UTF-8 column
marked as timestamps holds the loader's timestamptz values (YYYY-MM-DD[T ]HH:MM:SS[.f], then Z or
+-HH:MM): each is written as its microseconds since 1970 UTC, as polars' parse of it would give; one
marked as numerics holds the loader's plain decimals, each written as PostgreSQL prints a numeric of the
column's scale (no leading zeros, exactly that many decimals, no sign on zero); one marked as uuids
holds 8-4-4-4-12 hex digits of either case, written in lower case. A value of another shape, an
impossible date, a nonzero digit past the scale or more digits before the point than the column's
precision leaves room for fails the call (the caller then types the batch by every rule, or uses polars).
Each row's bucket is worked out from its key's text as written: the top bits of its MD5, or for a uuid
key, of its first two bytes XOR its last two (cutover/table_digests.py, key_bucket_sql). The
function holds no state and no lock, so threads may call it at once; Python's lock is released around
it (ctypes). It returns the number of rows, or a negative code (see row_md5.py) and writes nothing
the caller may use.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_arrow_columns.h"
#include "_loader_values.h"

typedef unsigned char *(*md5_fn)(const unsigned char *, size_t, unsigned char *);

enum { OWNED = INT64 + 1 };  /* a column's layout once rewritten (VIEW, INT64: _arrow_columns.h) */
enum { AS_IS = 0, TIMESTAMPS = 1, NUMERICS = 2, UUIDS = 3 };
enum { BUCKET_UUID = 0, BUCKET_MD5 = 1 };
#define MAX_COLUMNS 1024
#define SEPARATOR 0x1f

struct column {
    struct ArrowArray array;
    int layout;
    const int64_t *ints;  /* INT64: the values, by the array's index (a parsed timestamp column's own) */
    int64_t *parsed;      /* owned: a timestamp column's microseconds */
    int64_t *offsets;     /* OWNED: value i is owned[offsets[i]..offsets[i + 1]) (rewritten numerics or uuids) */
    unsigned char *owned;
};

static int open_column(struct ArrowArrayStream *stream, int64_t rows, struct column *col) {
    int err = open_array(stream, rows, &col->array, &col->layout);
    col->ints = col->layout == INT64 && !err ? (const int64_t *)col->array.buffers[1] : NULL;
    return err;
}

static const uint64_t POW10[20] = {
    1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL, 100000000ULL, 1000000000ULL,
    10000000000ULL, 100000000000ULL, 1000000000000ULL, 10000000000000ULL, 100000000000000ULL,
    1000000000000000ULL, 10000000000000000ULL, 100000000000000000ULL, 1000000000000000000ULL,
    10000000000000000000ULL};
static const char DIGIT_PAIRS[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static inline uint64_t magnitude(int64_t v) { return v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v; }

/* Decimal digits of u: from its bit length (log10(2) ~ 1233 / 4096), then one comparison. */
static inline size_t digit_count(uint64_t u) {
    if (u == 0) return 1;
    size_t t = (size_t)(((64 - __builtin_clzll(u)) * 1233) >> 12);
    return t + (u >= POW10[t]);
}

static inline size_t int_length(int64_t v) { return digit_count(magnitude(v)) + (v < 0); }

/* v in decimal, two digits a step from the end (a chain of half as many divisions). */
static inline size_t write_int(unsigned char *out, int64_t v) {
    uint64_t u = magnitude(v);
    size_t end = int_length(v), at = end;
    if (v < 0) out[0] = '-';
    while (u >= 100) {
        uint64_t pair = u % 100;
        u /= 100;
        at -= 2;
        memcpy(out + at, DIGIT_PAIRS + 2 * pair, 2);
    }
    if (u >= 10) memcpy(out + at - 2, DIGIT_PAIRS + 2 * u, 2);
    else out[at - 1] = (unsigned char)('0' + u);
    return end;
}

static inline uint64_t big_endian(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return v;
}

/* A timestamp column's values as microseconds: the column becomes an INT64 one (its NULLs kept). */
static int parse_timestamps(struct column *col, int64_t rows) {
    const struct ArrowArray *a = &col->array;
    col->parsed = malloc(sizeof(int64_t) * (size_t)(a->offset + rows));
    if (col->parsed == NULL) return E_MEMORY;
    for (int64_t i = a->offset; i < a->offset + rows; i++) {
        col->parsed[i] = 0;
        if (is_null(a, i)) continue;
        int64_t n;
        const unsigned char *p = text_at(a, i, &n);
        if (!parse_timestamp(p, n, &col->parsed[i])) return E_VALUE;
    }
    col->ints = col->parsed;
    col->layout = INT64;
    return 0;
}

/* How a column's value is rewritten: into out (room for n + room bytes), its new length, or -1 if the
value is not of the column's shape. */
struct rule {
    int64_t (*write)(const unsigned char *p, int64_t n, const struct rule *rule, unsigned char *out);
    int32_t scale, whole_digits;  /* a numeric column's */
    int64_t room;
};

/* A plain decimal ([+-], digits, '.', digits; one digit at least) as PostgreSQL prints it at the rule's
scale (room: scale + 2); -1 if it is not of the shape, has a nonzero digit past the scale or more than
whole_digits significant digits before the point. */
static int64_t canonical_numeric(const unsigned char *p, int64_t n, const struct rule *rule, unsigned char *out) {
    int32_t scale = rule->scale;
    struct decimal d;
    int64_t k = 0;
    int nonzero = 0;
    if (!parse_decimal(p, n, &d)) return -1;
    if (d.whole_len > rule->whole_digits && !(d.whole_len == 1 && d.whole[0] == '0')) return -1;
    for (int64_t i = scale; i < d.frac_len; i++)
        if (d.frac[i] != '0') return -1;
    for (int64_t i = 0; i < d.whole_len; i++) nonzero |= d.whole[i] != '0';
    for (int64_t i = 0; i < scale && i < d.frac_len; i++) nonzero |= d.frac[i] != '0';
    if (d.negative && nonzero) out[k++] = '-';
    if (d.whole_len == 0) out[k++] = '0';
    for (int64_t i = 0; i < d.whole_len; i++) out[k++] = d.whole[i];
    if (scale > 0) out[k++] = '.';
    for (int64_t i = 0; i < scale; i++) out[k++] = i < d.frac_len ? d.frac[i] : '0';
    return k;
}

/* A uuid (8-4-4-4-12 hex digits, either case) in lower case (room: 0); -1 if it is not of the shape. */
static int64_t canonical_uuid(const unsigned char *p, int64_t n, const struct rule *rule, unsigned char *out) {
    (void)rule;
    if (!read_uuid(p, n, NULL)) return -1;
    for (int k = 0; k < 36; k++) out[k] = p[k] >= 'A' && p[k] <= 'F' ? p[k] + ('a' - 'A') : p[k];
    return 36;
}

/* A column's values rewritten by rule: the column becomes an OWNED one (its NULLs kept). E_VALUE for a
value not of the rule's shape. */
static int rewrite_column(struct column *col, int64_t rows, const struct rule *rule) {
    const struct ArrowArray *a = &col->array;
    size_t cap = (size_t)rows * (36 + (size_t)rule->room) + 64;
    col->offsets = malloc(sizeof(int64_t) * (size_t)(a->offset + rows + 1));
    col->owned = malloc(cap);
    if (col->offsets == NULL || col->owned == NULL) return E_MEMORY;
    int64_t used = 0;
    for (int64_t i = a->offset; i < a->offset + rows; i++) {
        col->offsets[i] = used;
        if (is_null(a, i)) continue;
        int64_t n;
        const unsigned char *p = text_at(a, i, &n);
        if ((size_t)(used + n + rule->room) > cap) {
            cap = 2 * cap + (size_t)(n + rule->room);
            unsigned char *grown = realloc(col->owned, cap);
            if (grown == NULL) return E_MEMORY;
            col->owned = grown;
        }
        int64_t k = rule->write(p, n, rule, col->owned + used);
        if (k < 0) return E_VALUE;
        used += k;
    }
    col->offsets[a->offset + rows] = used;
    col->layout = OWNED;
    return 0;
}

/* The bucket of a key whose text is p[0..n): see the top of this file. -1 if a uuid's text is not hex. */
static int64_t bucket_of(const unsigned char *p, size_t n, int32_t kind, int32_t bits, md5_fn md5) {
    if (kind == BUCKET_MD5) {
        unsigned char digest[16];
        md5(p, n, digest);
        return (int64_t)(big_endian(digest) >> (64 - bits));
    }
    if (n < 8) return -1;
    int32_t first = 0, last = 0;
    for (int k = 0; k < 4; k++) {
        int a = hex_value(p[k]), b = hex_value(p[n - 4 + k]);
        if (a < 0 || b < 0) return -1;
        first = first << 4 | a;
        last = last << 4 | b;
    }
    return (first ^ last) >> (16 - bits);
}

/* Field i of column c: its length in the text, or -1 for a NULL. */
static inline int64_t field_length(const struct column *col, int64_t i) {
    if (is_null(&col->array, i)) return -1;
    if (col->layout == INT64) return (int64_t)int_length(col->ints[i]);
    if (col->layout == OWNED) return col->offsets[i + 1] - col->offsets[i];
    int32_t n;
    memcpy(&n, (const unsigned char *)col->array.buffers[1] + 16 * i, 4);
    return n;
}

static inline size_t write_field(unsigned char *out, const struct column *col, int64_t i) {
    if (col->layout == INT64) return write_int(out, col->ints[i]);
    if (col->layout == OWNED) {
        size_t n = (size_t)(col->offsets[i + 1] - col->offsets[i]);
        memcpy(out, col->owned + col->offsets[i], n);
        return n;
    }
    int64_t n;
    const unsigned char *p = text_at(&col->array, i, &n);
    memcpy(out, p, (size_t)n);
    return (size_t)n;
}

/* How many times byte b appears in p[0..len): by memchr, as the bytes counted are rare. */
static inline int64_t occurrences(const unsigned char *p, size_t len, unsigned char b) {
    int64_t n = 0;
    const unsigned char *end = p + len;
    while (p < end && (p = memchr(p, b, (size_t)(end - p))) != NULL) { n++; p++; }
    return n;
}

/* Rows go by tiles, each tile column by column: a column's values are read in order, and the tile's texts
stay in the CPU's cache (row by row, the reads of ~17 columns at once missed it: a third slower). */
#define TILE 256

/* kinds[c]: whether UTF-8 column c holds timestamps, uuids (written in lower case), or numerics of scale
scales[c] and at most wholes[c] significant digits before the point (see above), or is written as is.
key_column, bucket_kind, bucket_bits: the key's column and how its bucket is worked out, into buckets.
mask_group[c], mask_bit[c]: where column c's NULL flag goes (group -1: never NULL). untrusted: when not
NULL, flags each row whose text holds more separators than it joins fields (a value holds one). */
int64_t row_md5(int64_t rows, int32_t n_columns, struct ArrowArrayStream **streams, const int32_t *kinds,
                const int32_t *scales, const int32_t *wholes, int32_t key_column, int32_t bucket_kind,
                int32_t bucket_bits, const int32_t *mask_group, const int32_t *mask_bit, int32_t n_masks,
                md5_fn md5, int64_t *buckets, uint64_t *x0, uint64_t *x1, uint8_t *untrusted) {
    if (n_columns < 1 || n_columns > MAX_COLUMNS || n_masks < 0 || n_masks > MAX_COLUMNS || key_column < 0
        || key_column >= n_columns || bucket_bits < 1 || bucket_bits > 16)
        return E_COLUMNS;
    struct column *cols = calloc((size_t)n_columns, sizeof *cols);
    int64_t *masks = calloc((size_t)TILE * ((size_t)n_masks + 1), sizeof *masks);
    size_t start[TILE + 1], at[TILE], key_at[TILE], key_length[TILE], cap = 1 << 18;
    int64_t fields[TILE];
    unsigned char *text = malloc(cap);
    int64_t result = rows, opened = 0;
    if (cols == NULL || masks == NULL || text == NULL) { result = E_MEMORY; goto done; }
    for (; opened < n_columns; opened++) {
        int err = open_column(streams[opened], rows, &cols[opened]);
        if (err) {
            if (cols[opened].array.release) cols[opened].array.release(&cols[opened].array);
            result = err;
            goto done;
        }
    }
    for (int32_t c = 0; c < n_columns; c++) {
        if (kinds[c] == AS_IS) continue;
        struct rule rule = kinds[c] == UUIDS ? (struct rule){canonical_uuid, 0, 0, 0}
                           : (struct rule){canonical_numeric, scales[c], wholes[c], (int64_t)scales[c] + 2};
        int err = cols[c].layout != VIEW ? E_FORMAT : kinds[c] == TIMESTAMPS ? parse_timestamps(&cols[c], rows)
                : rewrite_column(&cols[c], rows, &rule);
        if (err) { result = err; goto done; }
    }
    for (int64_t t = 0; t < rows; t += TILE) {
        int64_t m = rows - t < TILE ? rows - t : TILE;
        /* 1. each text's length: every field and bitmask followed by a separator, the last one dropped */
        size_t length[TILE] = {0};
        memset(fields, 0, sizeof fields);
        memset(masks, 0, sizeof *masks * (size_t)TILE * (size_t)n_masks);
        for (int32_t c = 0; c < n_columns; c++) {
            const struct column *col = &cols[c];
            for (int64_t k = 0; k < m; k++) {
                int64_t n = field_length(col, col->array.offset + t + k);
                if (n < 0) {
                    if (mask_group[c] >= 0) masks[k * n_masks + mask_group[c]] |= (int64_t)1 << mask_bit[c];
                    continue;
                }
                length[k] += (size_t)n + 1;
                fields[k]++;
            }
        }
        start[0] = 0;
        for (int64_t k = 0; k < m; k++) {
            for (int32_t g = 0; g < n_masks; g++) length[k] += int_length(masks[k * n_masks + g]) + 1;
            fields[k] += n_masks;
            start[k + 1] = start[k] + length[k];
            at[k] = start[k];
        }
        if (start[m] > cap) {
            while (start[m] > cap) cap *= 2;
            free(text);
            text = malloc(cap);
            if (text == NULL) { result = E_MEMORY; goto done; }
        }
        /* 2. the texts, column by column */
        for (int32_t c = 0; c < n_columns; c++) {
            const struct column *col = &cols[c];
            for (int64_t k = 0; k < m; k++) {
                int64_t i = col->array.offset + t + k;
                if (is_null(&col->array, i)) {
                    if (c == key_column) { result = E_VALUE; goto done; }
                    continue;
                }
                size_t written = write_field(text + at[k], col, i);
                if (c == key_column) { key_at[k] = at[k]; key_length[k] = written; }
                at[k] += written;
                text[at[k]++] = SEPARATOR;
            }
        }
        /* 3. the bitmasks, the digests and the separator checks, row by row */
        for (int64_t k = 0; k < m; k++) {
            for (int32_t g = 0; g < n_masks; g++) {
                at[k] += write_int(text + at[k], masks[k * n_masks + g]);
                text[at[k]++] = SEPARATOR;
            }
            const unsigned char *row = text + start[k];
            size_t len = length[k] ? length[k] - 1 : 0;
            unsigned char digest[16];
            md5(row, len, digest);
            x0[t + k] = big_endian(digest);
            x1[t + k] = big_endian(digest + 8);
            buckets[t + k] = bucket_of(text + key_at[k], key_length[k], bucket_kind, bucket_bits, md5);
            if (buckets[t + k] < 0) { result = E_VALUE; goto done; }
            if (untrusted != NULL) untrusted[t + k] = occurrences(row, len, SEPARATOR) != fields[k] - 1;
        }
    }
done:
    for (int64_t c = 0; c < opened; c++) {
        cols[c].array.release(&cols[c].array);
        free(cols[c].parsed);
        free(cols[c].offsets);
        free(cols[c].owned);
    }
    free(cols);
    free(masks);
    free(text);
    return result;
}
