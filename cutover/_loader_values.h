/* The loader's typed values as the C kernels read them (cutover/coerce.py writes or passes them):
timestamps YYYY-MM-DD[T ]HH:MM:SS[.f], then Z or +-HH:MM; plain decimals; uuids of hex digits. Shared
by _row_md5.c and _copy_binary.c; static functions only. */
#ifndef CUTOVER_LOADER_VALUES_H
#define CUTOVER_LOADER_VALUES_H

#include <stdint.h>

static inline int digits(const unsigned char *p, int n, int *out) {
    int v = 0;
    for (int k = 0; k < n; k++) {
        if (p[k] < '0' || p[k] > '9') return 0;
        v = v * 10 + (p[k] - '0');
    }
    *out = v;
    return 1;
}

/* Days from 1970-01-01 to a date of the proleptic Gregorian calendar (eras of 400 years from 0000-03-01). */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t year_of_era = y - era * 400;
    int64_t day_of_year = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + day_of_era - 719468;
}

/* A timestamp's microseconds since 1970 UTC; 0 if it is not of the shape, or names no real instant. */
static int parse_timestamp(const unsigned char *p, int64_t n, int64_t *micros) {
    static const int month_days[13] = {0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, sec, frac = 0, oh = 0, om = 0;
    if (n < 20 || p[4] != '-' || p[7] != '-' || (p[10] != 'T' && p[10] != ' ') || p[13] != ':' || p[16] != ':'
        || !digits(p, 4, &y) || !digits(p + 5, 2, &mo) || !digits(p + 8, 2, &d) || !digits(p + 11, 2, &h)
        || !digits(p + 14, 2, &mi) || !digits(p + 17, 2, &sec))
        return 0;
    int64_t at = 19;
    if (p[at] == '.') {
        int64_t k = 0;
        while (at + 1 + k < n && k < 7 && p[at + 1 + k] >= '0' && p[at + 1 + k] <= '9') k++;
        if (k < 1 || k > 6 || !digits(p + at + 1, (int)k, &frac)) return 0;
        for (int64_t z = k; z < 6; z++) frac *= 10;
        at += 1 + k;
    }
    if (n - at == 1 && p[at] == 'Z') {
    } else if (n - at == 6 && (p[at] == '+' || p[at] == '-') && p[at + 3] == ':' && digits(p + at + 1, 2, &oh)
               && digits(p + at + 4, 2, &om)) {
        if (oh > 15 || om > 59) return 0;
        if (p[at] == '-') { oh = -oh; om = -om; }
    } else {
        return 0;
    }
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo < 1 || mo > 12 || d < 1 || d > month_days[mo] + (mo == 2 && leap) || h > 23 || mi > 59 || sec > 59)
        return 0;
    int64_t seconds = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - (oh * 3600 + om * 60);
    *micros = seconds * 1000000 + frac;
    return 1;
}

/* A plain decimal: [+-], digits, '.', digits, one digit at least. whole: its digits before the point,
leading zeros dropped but one ("007" is "7", "00" is "0", none stays none); frac: those after it. */
struct decimal {
    int negative;
    const unsigned char *whole, *frac;
    int64_t whole_len, frac_len;
};

static int parse_decimal(const unsigned char *p, int64_t n, struct decimal *d) {
    int64_t at = 0;
    d->negative = 0;
    if (at < n && (p[at] == '+' || p[at] == '-')) d->negative = p[at++] == '-';
    int64_t whole = at;
    while (at < n && p[at] >= '0' && p[at] <= '9') at++;
    int64_t whole_end = at, frac = at, frac_end = at;
    if (at < n && p[at] == '.') {
        frac = ++at;
        while (at < n && p[at] >= '0' && p[at] <= '9') at++;
        frac_end = at;
    }
    if (at != n || (whole_end == whole && frac_end == frac)) return 0;
    while (whole < whole_end - 1 && p[whole] == '0') whole++;
    d->whole = p + whole;
    d->whole_len = whole_end - whole;
    d->frac = p + frac;
    d->frac_len = frac_end - frac;
    return 1;
}

static inline int hex_value(unsigned char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* A hex digit's value, either case; *bad is set if c is none. Without a branch: a uuid's digits and
letters come at random, and mispredicted branches made its reading ~5x slower. */
static inline int hex_digit(unsigned char c, int *bad) {
    unsigned digit = (unsigned)c - '0', letter = (unsigned)(c | 0x20) - 'a';
    *bad |= (digit >= 10) & (letter >= 6);
    return digit < 10 ? (int)digit : (int)letter + 10;
}

/* Where a uuid's 16 bytes begin in its text: 8-4-4-4-12 hex digits. */
static const uint8_t UUID_BYTE_AT[16] = {0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34};

/* Whether p[0..n) is a uuid (either case); its 16 bytes into out, if out is not NULL. */
static int read_uuid(const unsigned char *p, int64_t n, unsigned char *out) {
    if (n != 36 || p[8] != '-' || p[13] != '-' || p[18] != '-' || p[23] != '-') return 0;
    int bad = 0;
    for (int k = 0; k < 16; k++) {
        int high = hex_digit(p[UUID_BYTE_AT[k]], &bad), low = hex_digit(p[UUID_BYTE_AT[k] + 1], &bad);
        if (out != NULL) out[k] = (unsigned char)(high << 4 | low);
    }
    return !bad;
}

#endif
