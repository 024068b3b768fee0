/* A batch's records, found in one pass over its bytes (see cutover/record_index.py).

Contract: for bytes that begin on a record boundary, the records are what cutover/csvscan.py's
index_records gives with numpy: a record ends at a line feed outside quotes, or at the end of the bytes;
for each, its first byte, the end of its content (before its LF, or CR LF), the end of its line ending,
the line it starts on (first_line plus the line feeds before it, quoted ones included) and, when asked,
its fields (its commas outside quotes, plus one). A quote that opens a field must follow a comma, a line
feed, another quote or the start of the bytes; one that closes it must be followed by a comma, CR, LF,
another quote or the end of the bytes. Bytes that break that rule, or end inside quotes, make the call
return -1 and write nothing the caller may use: numpy's reader then says where the file is wrong.

count_line_feeds gives the capacity index_records needs: at most one record per line feed, plus one.
Neither function holds state or a lock, so threads may call them at once; Python's lock is released
around them (ctypes).
*/
#include <stdint.h>
#include <string.h>

#define EACH_BYTE(c) (0x0101010101010101ULL * (uint8_t)(c))
#define LOW_BITS 0x7f7f7f7f7f7f7f7fULL

/* The high bit of each byte of x that is zero, and no other bit (exact: no carry crosses bytes). */
static inline uint64_t zero_bytes(uint64_t x)
{
    return ~(((x & LOW_BITS) + LOW_BITS) | x | LOW_BITS);
}

/* How many high bits zero_bytes set: the bytes' sum, gathered in the top byte by one multiplication
   (a portable popcount: without -mpopcnt, compilers call a slow library one) */
static inline int64_t count_set(uint64_t high_bits)
{
    return (int64_t)(((high_bits >> 7) * EACH_BYTE(1)) >> 56);
}

int64_t count_line_feeds(const uint8_t *bytes, int64_t n)
{
    int64_t count = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, bytes + i, 8);
        count += count_set(zero_bytes(word ^ EACH_BYTE('\n')));
    }
    for (; i < n; i++)
        count += bytes[i] == '\n';
    return count;
}

enum { OTHER, QUOTE, LINE_FEED, COMMA };

struct reader {
    const uint8_t *bytes;
    int64_t n, first_line, capacity, records, start, line_feeds, line_feeds_before, commas;
    int64_t *starts, *ends, *stops, *lines, *fields;
    int quoted;
    uint8_t kind[256];
};

/* One byte that is not OTHER; 0, or the call's error code. */
static inline int64_t step(struct reader *r, int64_t i)
{
    const uint8_t *bytes = r->bytes;
    switch (r->kind[bytes[i]]) {
    case QUOTE:
        if (!r->quoted) {
            uint8_t before = i ? bytes[i - 1] : '\n';
            if (before != ',' && before != '\n' && before != '"')
                return -1;
        } else {
            uint8_t after = i + 1 < r->n ? bytes[i + 1] : '\n';
            if (after != ',' && after != '\n' && after != '\r' && after != '"')
                return -1;
        }
        r->quoted = !r->quoted;
        break;
    case COMMA:
        r->commas += !r->quoted;
        break;
    case LINE_FEED:
        r->line_feeds++;
        if (r->quoted)
            break;
        if (r->records == r->capacity)
            return -2;
        r->starts[r->records] = r->start;
        r->stops[r->records] = i + 1;
        r->ends[r->records] = (i > r->start && bytes[i - 1] == '\r') ? i - 1 : i;
        r->lines[r->records] = r->first_line + r->line_feeds_before;
        if (r->fields)
            r->fields[r->records] = r->commas + 1;
        r->records++;
        r->start = i + 1;
        r->line_feeds_before = r->line_feeds;
        r->commas = 0;
        break;
    }
    return 0;
}

/* Returns the number of records, -1 for misplaced or unterminated quotes, -2 if more records than
   capacity. fields may be NULL (not counted). */
int64_t index_records(const uint8_t *bytes, int64_t n, int64_t first_line, int64_t capacity,
                      int64_t *starts, int64_t *ends, int64_t *stops, int64_t *lines, int64_t *fields)
{
    struct reader r = {bytes, n, first_line, capacity, 0, 0, 0, 0, 0, starts, ends, stops, lines, fields, 0, {0}};
    memset(r.kind, OTHER, sizeof r.kind);
    r.kind['"'] = QUOTE;
    r.kind['\n'] = LINE_FEED;
    if (fields)
        r.kind[','] = COMMA;
    int64_t i = 0, failed;
    /* eight bytes at a time: quotes and line feeds are rare, so most words hold neither; their commas
       (when counted) are counted together */
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, bytes + i, 8);
        uint64_t special = zero_bytes(word ^ EACH_BYTE('"')) | zero_bytes(word ^ EACH_BYTE('\n'));
        uint64_t commas = fields ? zero_bytes(word ^ EACH_BYTE(',')) : 0;
        if (!special) {
            if (!r.quoted)
                r.commas += count_set(commas);
            continue;
        }
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        /* the word's special bytes in order: its lowest set bit is its first byte's */
        for (uint64_t hits = special | commas; hits; hits &= hits - 1)
            if ((failed = step(&r, i + (__builtin_ctzll(hits) >> 3))))
                return failed;
#else
        for (int64_t j = i; j < i + 8; j++)
            if (r.kind[bytes[j]] != OTHER && (failed = step(&r, j)))
                return failed;
#endif
    }
    for (; i < n; i++)
        if (r.kind[bytes[i]] != OTHER && (failed = step(&r, i)))
            return failed;
    if (r.quoted)
        return -1;
    if (r.start < n) {  /* a last record without a line feed */
        if (r.records == capacity)
            return -2;
        starts[r.records] = r.start;
        stops[r.records] = n;
        ends[r.records] = bytes[n - 1] == '\r' ? n - 1 : n;
        lines[r.records] = first_line + r.line_feeds_before;
        if (fields)
            fields[r.records] = r.commas + 1;
        r.records++;
    }
    return r.records;
}
