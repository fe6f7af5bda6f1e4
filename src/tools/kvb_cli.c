/*
 * Checked option values for the kvbridge programs (kvb_cli.h).
 */
#include "config.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kvb_cli.h"

#define WHY_MAX 128

static void refuse(const char *prog, const char *opt, const char *value, const char *what, const char *why)
{
	fprintf(stderr, "%s: %s %s: %s%s%s\n", prog, opt, *value ? value : "''", what ? what : "",
		what ? "; " : "", why);
}

/* "must be at least LO", "must be LO", "must be between LO and HI"; hi NULL
 * for no upper bound. */
static void range_text(char *why, size_t len, const char *lo, const char *hi)
{
	if (!hi)
		snprintf(why, len, "must be at least %s", lo);
	else if (strcmp(lo, hi) == 0)
		snprintf(why, len, "must be %s", lo);
	else
		snprintf(why, len, "must be between %s and %s", lo, hi);
}

static void int64_range(char *why, size_t len, int64_t min, int64_t max)
{
	char lo[24], hi[24];
	snprintf(lo, sizeof(lo), "%" PRId64, min);
	snprintf(hi, sizeof(hi), "%" PRId64, max);
	range_text(why, len, lo, max == INT64_MAX ? NULL : hi);
}

static void uint64_range(char *why, size_t len, uint64_t min, uint64_t max)
{
	char lo[24], hi[24];
	snprintf(lo, sizeof(lo), "%" PRIu64, min);
	snprintf(hi, sizeof(hi), "%" PRIu64, max);
	range_text(why, len, lo, max == UINT64_MAX ? NULL : hi);
}

/* A decimal integer: an optional sign, then digits and nothing else (no
 * blanks, no 1e3).  *over when its magnitude does not fit 64 bits. */
static bool parse_whole(const char *s, bool *neg, uint64_t *mag, bool *over)
{
	*neg = false;
	*mag = 0;
	*over = false;
	if (*s == '-' || *s == '+')
		*neg = *s++ == '-';
	if (!g_ascii_isdigit(*s))
		return false;
	for (; g_ascii_isdigit(*s); s++) {
		unsigned d = (unsigned)(*s - '0');
		if (*mag > (UINT64_MAX - d) / 10)
			*over = true;
		else if (!*over)
			*mag = *mag * 10 + d;
	}
	return *s == '\0';
}

bool kvb_cli_parse_int64(const char *prog, const char *opt, const char *text, int64_t min, int64_t max,
			 int64_t *out)
{
	char why[WHY_MAX];
	bool neg, over;
	uint64_t mag;
	if (!text)
		return true;
	int64_range(why, sizeof(why), min, max);
	if (!parse_whole(text, &neg, &mag, &over)) {
		refuse(prog, opt, text, "not an integer", why);
		return false;
	}
	bool fits = !over && mag <= (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX);
	int64_t v = 0;
	if (fits)
		v = !neg ? (int64_t)mag : mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
	if (!fits || v < min || v > max) {
		refuse(prog, opt, text, NULL, why);
		return false;
	}
	*out = v;
	return true;
}

bool kvb_cli_parse_uint64(const char *prog, const char *opt, const char *text, uint64_t min, uint64_t max,
			  uint64_t *out)
{
	char why[WHY_MAX];
	bool neg, over;
	uint64_t mag;
	if (!text)
		return true;
	uint64_range(why, sizeof(why), min, max);
	if (!parse_whole(text, &neg, &mag, &over)) {
		refuse(prog, opt, text, "not an integer", why);
		return false;
	}
	if (over || (neg && mag) || mag < min || mag > max) {
		refuse(prog, opt, text, NULL, why);
		return false;
	}
	*out = mag;
	return true;
}

bool kvb_cli_parse_uint32(const char *prog, const char *opt, const char *text, uint32_t min, uint32_t max,
			  uint32_t *out)
{
	uint64_t v;
	if (!text)
		return true;
	if (!kvb_cli_parse_uint64(prog, opt, text, min, max, &v))
		return false;
	*out = (uint32_t)v;
	return true;
}

bool kvb_cli_parse_int(const char *prog, const char *opt, const char *text, int min, int max, int *out)
{
	int64_t v;
	if (!text)
		return true;
	if (!kvb_cli_parse_int64(prog, opt, text, min, max, &v))
		return false;
	*out = (int)v;
	return true;
}

bool kvb_cli_range_double(double value, double min, double max, unsigned flags, char *why, size_t len)
{
	char lo[G_ASCII_DTOSTR_BUF_SIZE], hi[G_ASCII_DTOSTR_BUF_SIZE];
	g_ascii_formatd(lo, sizeof(lo), "%.15g", min);
	g_ascii_formatd(hi, sizeof(hi), "%.15g", max);
	bool bounded = isfinite(max);
	if (!(flags & KVB_CLI_ABOVE_MIN))
		range_text(why, len, lo, bounded ? hi : NULL);
	else if (bounded)
		snprintf(why, len, "must be greater than %s and at most %s", lo, hi);
	else
		snprintf(why, len, "must be greater than %s", lo);
	if (!isfinite(value) || value > max)
		return false;
	return (flags & KVB_CLI_ABOVE_MIN) ? value > min : value >= min;
}

bool kvb_cli_parse_double(const char *prog, const char *opt, const char *text, double min, double max,
			  unsigned flags, double *out)
{
	char why[WHY_MAX];
	char *end = NULL;
	if (!text)
		return true;
	double v = g_ascii_strtod(text, &end);
	bool in = kvb_cli_range_double(v, min, max, flags, why, sizeof(why));
	if (end == text || *end || g_ascii_isspace(*text)) {
		refuse(prog, opt, text, "not a number", why);
		return false;
	}
	if (!isfinite(v)) {
		refuse(prog, opt, text, "not a finite number", why);
		return false;
	}
	if (!in) {
		refuse(prog, opt, text, NULL, why);
		return false;
	}
	*out = v;
	return true;
}

bool kvb_cli_check_int64(const char *prog, const char *opt, int64_t value, int64_t min, int64_t max)
{
	char why[WHY_MAX], val[24];
	if (value >= min && value <= max)
		return true;
	int64_range(why, sizeof(why), min, max);
	snprintf(val, sizeof(val), "%" PRId64, value);
	refuse(prog, opt, val, NULL, why);
	return false;
}

bool kvb_cli_check_double(const char *prog, const char *opt, double value, double min, double max,
			  unsigned flags)
{
	char why[WHY_MAX], val[G_ASCII_DTOSTR_BUF_SIZE];
	if (kvb_cli_range_double(value, min, max, flags, why, sizeof(why)))
		return true;
	g_ascii_formatd(val, sizeof(val), "%.15g", value);
	refuse(prog, opt, val, isfinite(value) ? NULL : "not a finite number", why);
	return false;
}

char *kvb_cli_choices(const char *const *names)
{
	return g_strjoinv(", ", (gchar **)names);
}

bool kvb_cli_bad_choice(const char *prog, const char *opt, const char *text, const char *const *names)
{
	char *list = kvb_cli_choices(names);
	fprintf(stderr, "%s: %s %s: expected one of %s\n", prog, opt, *text ? text : "''", list);
	g_free(list);
	return false;
}

bool kvb_cli_parse_choice(const char *prog, const char *opt, const char *text, const char *const *names,
			  int *index)
{
	if (!text)
		return true;
	for (int i = 0; names[i]; i++)
		if (strcmp(text, names[i]) == 0) {
			*index = i;
			return true;
		}
	return kvb_cli_bad_choice(prog, opt, text, names);
}

void kvb_cli_free_strings(const GOptionEntry *entries)
{
	for (const GOptionEntry *e = entries; e->long_name; e++) {
		switch (e->arg) {
		case G_OPTION_ARG_STRING:
		case G_OPTION_ARG_FILENAME:
			g_free(*(gchar **)e->arg_data);
			*(gchar **)e->arg_data = NULL;
			break;
		case G_OPTION_ARG_STRING_ARRAY:
		case G_OPTION_ARG_FILENAME_ARRAY:
			g_strfreev(*(gchar ***)e->arg_data);
			*(gchar ***)e->arg_data = NULL;
			break;
		default:
			break;
		}
	}
}
