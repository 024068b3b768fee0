/* A batch's columns as the C kernels read them: polars' own Arrow C streams (no copy), one chunk each,
all of one length; UTF-8 views (polars' strings) or int64, any other layout refused. Shared by
_row_md5.c and _copy_binary.c; static functions only, so each kernel compiles its own copy. */
#ifndef CUTOVER_ARROW_COLUMNS_H
#define CUTOVER_ARROW_COLUMNS_H

#include <stdint.h>
#include <string.h>

struct ArrowSchema {
    const char *format, *name, *metadata;
    int64_t flags, n_children;
    struct ArrowSchema **children, *dictionary;
    void (*release)(struct ArrowSchema *);
    void *private_data;
};
struct ArrowArray {
    int64_t length, null_count, offset, n_buffers, n_children;
    const void **buffers;
    struct ArrowArray **children, *dictionary;
    void (*release)(struct ArrowArray *);
    void *private_data;
};
struct ArrowArrayStream {
    int (*get_schema)(struct ArrowArrayStream *, struct ArrowSchema *);
    int (*get_next)(struct ArrowArrayStream *, struct ArrowArray *);
    const char *(*get_last_error)(struct ArrowArrayStream *);
    void (*release)(struct ArrowArrayStream *);
    void *private_data;
};

enum { VIEW, INT64 };
enum { E_STREAM = -1, E_FORMAT = -2, E_SHAPE = -3, E_MEMORY = -4, E_COLUMNS = -5, E_VALUE = -6 };

/* The stream's one chunk of `rows` values into array (the caller releases it, once array->release is set),
and its layout. */
static int open_array(struct ArrowArrayStream *stream, int64_t rows, struct ArrowArray *array, int *layout) {
    struct ArrowSchema schema;
    if (stream->get_schema(stream, &schema)) return E_STREAM;
    const char *f = schema.format;
    *layout = !strcmp(f, "vu") ? VIEW : !strcmp(f, "l") ? INT64 : -1;
    schema.release(&schema);
    if (*layout < 0) return E_FORMAT;
    if (stream->get_next(stream, array)) return E_STREAM;
    if (array->release == NULL) return E_SHAPE;  /* no chunk at all */
    struct ArrowArray more;  /* exactly one chunk */
    if (array->length != rows || stream->get_next(stream, &more)) return E_SHAPE;
    if (more.release != NULL) { more.release(&more); return E_SHAPE; }
    return 0;
}

static inline int is_null(const struct ArrowArray *a, int64_t i) {
    const uint8_t *valid = a->buffers[0];
    return a->null_count != 0 && valid != NULL && !((valid[i >> 3] >> (i & 7)) & 1);
}

/* Field i of a UTF-8 view column: its bytes and length (a view holds up to 12 bytes itself, else
points into one of the data buffers that follow the views). */
static inline const unsigned char *text_at(const struct ArrowArray *a, int64_t i, int64_t *len) {
    const unsigned char *view = (const unsigned char *)a->buffers[1] + 16 * i;
    int32_t n, buffer, offset;
    memcpy(&n, view, 4);
    *len = n;
    if (n <= 12) return view + 4;
    memcpy(&buffer, view + 8, 4);
    memcpy(&offset, view + 12, 4);
    return (const unsigned char *)a->buffers[2 + buffer] + offset;
}

#endif
