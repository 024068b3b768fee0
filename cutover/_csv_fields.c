/* A batch's records split into their fields, as Arrow UTF-8 view columns (see cutover/csv_fields.py).

Contract: split_fields reads records i < n_records of bytes, each bytes[starts[i]..ends[i]) (its content,
no line ending), each of exactly n_columns fields with commas between them. A field that begins with a
quote is quoted: its value is what lies between its quotes, each doubled quote made one, and a comma or
the record's end follows its closing quote; any other field is its bytes as they are, up to the next
comma, and NULL when empty (as polars' read_csv reads them). Into *out it writes an Arrow C stream of one
struct array of n_columns UTF-8 view columns named "0", "1", ...: their views point into a copy of the
bytes, or into a buffer of the unescaped values; the array owns both (its release frees them), the schema
its own names. It returns 0; E_SHAPE (nothing written) when a record holds another number of fields or a
quoted field is not closed where it should be; E_MEMORY. No state, no lock: threads may call it at once,
and Python's lock is released around it (ctypes).
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "_arrow_columns.h"

#define MAX_COLUMNS 1600
#define NAME_BYTES 8 /* "1599" and its NUL */
#define BUFFERS 5    /* a view column's: validity, views, the bytes, the unescaped values, their two sizes */
#define NULLABLE 2   /* ARROW_FLAG_NULLABLE */

struct data { /* the array's memory, freed by its release */
    unsigned char *text, *unescaped;
    int64_t sizes[2];
    uint8_t *validity, *views; /* column c's at c * validity_bytes and c * 16 * rows */
    size_t text_bytes, view_bytes;
    const void **buffers;      /* column c's BUFFERS pointers at c * BUFFERS */
    struct ArrowArray *children, **child_list;
    const void *parent_buffers[1];
};

struct names { /* the schema's memory, freed by its release */
    struct ArrowSchema *children, **child_list;
    char *text;
};

struct stream_state {
    struct data *data; /* NULL once handed over with the array */
    int64_t rows;
    int32_t columns;
};

/* A block of its own pages, in huge pages where the system grants them: returned to the system when freed
(malloc's heap kept them, ~40 MB more peak memory in a first load), in ~4 faults, not ~1,000 (4 KiB pages:
half the split's time). */
static void *own_block(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    madvise(p, n, MADV_HUGEPAGE);
    return p;
}

static void free_block(void *p, size_t n) { if (p != NULL) munmap(p, n); }

static void free_data(struct data *d) {
    if (d == NULL) return;
    free_block(d->text, d->text_bytes); free_block(d->views, d->view_bytes);
    free(d->unescaped); free(d->validity); free(d->buffers);
    free(d->children); free(d->child_list);
    free(d);
}

static void release_child(struct ArrowArray *a) { a->release = NULL; }        /* freed with its parent */
static void release_child_schema(struct ArrowSchema *s) { s->release = NULL; }

static void release_array(struct ArrowArray *a) {
    free_data(a->private_data);
    a->release = NULL;
}

static void release_schema(struct ArrowSchema *s) {
    struct names *n = s->private_data;
    free(n->children); free(n->child_list); free(n->text); free(n);
    s->release = NULL;
}

static int get_schema(struct ArrowArrayStream *stream, struct ArrowSchema *out) {
    struct stream_state *st = stream->private_data;
    struct names *n = calloc(1, sizeof *n);
    if (n == NULL) return 12; /* ENOMEM */
    n->children = calloc((size_t)st->columns, sizeof *n->children);
    n->child_list = calloc((size_t)st->columns, sizeof *n->child_list);
    n->text = calloc((size_t)st->columns, NAME_BYTES);
    if (n->children == NULL || n->child_list == NULL || n->text == NULL) {
        free(n->children); free(n->child_list); free(n->text); free(n);
        return 12;
    }
    for (int32_t c = 0; c < st->columns; c++) {
        char *name = n->text + (size_t)c * NAME_BYTES;
        int32_t v = c, k = 0;
        char digits[NAME_BYTES];
        do { digits[k++] = (char)('0' + v % 10); v /= 10; } while (v);
        for (int32_t j = 0; j < k; j++) name[j] = digits[k - 1 - j];
        n->children[c] = (struct ArrowSchema){"vu", name, NULL, NULLABLE, 0, NULL, NULL, release_child_schema, NULL};
        n->child_list[c] = &n->children[c];
    }
    *out = (struct ArrowSchema){"+s", "", NULL, 0, st->columns, n->child_list, NULL, release_schema, n};
    return 0;
}

/* The one chunk, then the end (a released array): the chunk owns its memory from then on. */
static int get_next(struct ArrowArrayStream *stream, struct ArrowArray *out) {
    struct stream_state *st = stream->private_data;
    if (st->data == NULL) {
        memset(out, 0, sizeof *out);
        return 0;
    }
    struct data *d = st->data;
    st->data = NULL;
    *out = (struct ArrowArray){st->rows, 0, 0, 1, st->columns, d->parent_buffers, d->child_list, NULL,
                               release_array, d};
    return 0;
}

static const char *get_last_error(struct ArrowArrayStream *stream) { (void)stream; return NULL; }

static void release_stream(struct ArrowArrayStream *stream) {
    struct stream_state *st = stream->private_data;
    free_data(st->data);
    free(st);
    stream->release = NULL;
}

static inline void mark_valid(uint8_t *validity, int64_t i) { validity[i >> 3] |= (uint8_t)(1 << (i & 7)); }

/* A view of the value at buffer[offset..offset + n), whose bytes are p. */
static inline void write_view(uint8_t *view, const unsigned char *p, int32_t n, int32_t buffer, int32_t offset) {
    memset(view, 0, 16);
    memcpy(view, &n, 4);
    if (n <= 12) {
        memcpy(view + 4, p, (size_t)n);
        return;
    }
    memcpy(view + 4, p, 4);
    memcpy(view + 8, &buffer, 4);
    memcpy(view + 12, &offset, 4);
}

int64_t split_fields(const unsigned char *bytes, int64_t n_bytes, const int64_t *starts, const int64_t *ends,
                     int64_t n_records, int32_t n_columns, struct ArrowArrayStream *out) {
    if (n_columns < 1 || n_columns > MAX_COLUMNS || n_bytes > INT32_MAX) return E_COLUMNS;
    int64_t rows = n_records, validity_bytes = (rows + 7) / 8;
    struct data *d = calloc(1, sizeof *d);
    struct stream_state *st = calloc(1, sizeof *st);
    if (d == NULL || st == NULL) goto no_memory;
    d->text_bytes = (size_t)n_bytes + 1;
    d->text = own_block(d->text_bytes);
    d->unescaped = malloc((size_t)n_bytes + 1); /* unescaped values are shorter than their fields */
    d->validity = calloc((size_t)n_columns, (size_t)validity_bytes + 1);
    d->view_bytes = (size_t)n_columns * 16 * (size_t)rows + 1;
    d->views = own_block(d->view_bytes);
    d->buffers = calloc((size_t)n_columns * BUFFERS, sizeof *d->buffers);
    d->children = calloc((size_t)n_columns, sizeof *d->children);
    d->child_list = calloc((size_t)n_columns, sizeof *d->child_list);
    if (!d->text || !d->unescaped || !d->validity || !d->views || !d->buffers || !d->children || !d->child_list)
        goto no_memory;
    memcpy(d->text, bytes, (size_t)n_bytes);
    const unsigned char *text = d->text;
    int64_t *nulls = calloc((size_t)n_columns, sizeof *nulls);
    if (nulls == NULL) goto no_memory;
    int32_t used = 0; /* bytes of unescaped */
    for (int64_t i = 0; i < rows; i++) {
        const unsigned char *p = text + starts[i], *end = text + ends[i];
        for (int32_t c = 0; c < n_columns; c++) {
            uint8_t *view = d->views + ((size_t)c * (size_t)rows + (size_t)i) * 16;
            const unsigned char *value, *after;
            int32_t n, buffer = 0;
            if (p < end && *p == '"') { /* quoted: up to the quote not doubled */
                const unsigned char *q = p + 1;
                int doubled = 0;
                for (;;) {
                    q = memchr(q, '"', (size_t)(end - q));
                    if (q == NULL) { free(nulls); goto bad_shape; }
                    if (q + 1 < end && q[1] == '"') { doubled = 1; q += 2; continue; }
                    break;
                }
                value = p + 1;
                n = (int32_t)(q - value);
                after = q + 1;
                if (doubled) { /* each "" made " in the unescaped buffer */
                    unsigned char *w = d->unescaped + used;
                    for (const unsigned char *r = value; r < q; r++) {
                        *w++ = *r;
                        if (*r == '"') r++;
                    }
                    n = (int32_t)(w - (d->unescaped + used));
                    value = d->unescaped + used;
                    buffer = 1;
                    used += n;
                }
                mark_valid(d->validity + (size_t)c * (size_t)(validity_bytes + 1), i);
            } else { /* as it is, up to the next comma; NULL when empty */
                const unsigned char *q = p; /* a byte loop: most fields are short, and memchr's call costs more */
                while (q < end && *q != ',') q++;
                after = q; /* in the last field, a comma is one field too many */
                value = p;
                n = (int32_t)(after - p);
                if (n > 0)
                    mark_valid(d->validity + (size_t)c * (size_t)(validity_bytes + 1), i);
                else
                    nulls[c]++;
            }
            if (c + 1 < n_columns ? (after >= end || *after != ',') : after != end) { free(nulls); goto bad_shape; }
            write_view(view, value, n, buffer, (int32_t)(value - (buffer ? d->unescaped : text)));
            p = after + 1;
        }
    }
    d->sizes[0] = n_bytes;
    d->sizes[1] = used;
    for (int32_t c = 0; c < n_columns; c++) {
        const void **b = d->buffers + (size_t)c * BUFFERS;
        b[0] = nulls[c] ? d->validity + (size_t)c * (size_t)(validity_bytes + 1) : NULL;
        b[1] = d->views + (size_t)c * 16 * (size_t)rows;
        b[2] = d->text;
        b[3] = d->unescaped;
        b[4] = d->sizes;
        d->children[c] = (struct ArrowArray){rows, nulls[c], 0, BUFFERS, 0, b, NULL, NULL, release_child, NULL};
        d->child_list[c] = &d->children[c];
    }
    free(nulls);
    d->parent_buffers[0] = NULL;
    st->data = d;
    st->rows = rows;
    st->columns = n_columns;
    *out = (struct ArrowArrayStream){get_schema, get_next, get_last_error, release_stream, st};
    return 0;
bad_shape:
    free_data(d);
    free(st);
    return E_SHAPE;
no_memory:
    free_data(d);
    free(st);
    return E_MEMORY;
}
