/*
 * Checked option values for the kvbridge programs.
 *
 * GOption parses numbers but knows no ranges, and a program that keeps a
 * sentinel in a typed option (-1 = "not given") cannot tell a user's -1 from
 * no option at all, so out-of-range values used to turn silently into
 * defaults.  Here a numeric option arrives as text (G_OPTION_ARG_STRING,
 * NULL when absent) and is parsed and range-checked in one call; a value
 * outside the range, or not a number, or not finite, is refused with a line
 * on stderr naming the program, the option, the value and what is allowed:
 *
 *   kvbridge-sim: --requests -5: must be at least 1
 *   kvbridge-sim: --abort-prob 1.5: must be between 0 and 1
 *   kvbridge-bench: --rpc-port 70000: must be between 0 and 65535
 *   kvbridge-sim: --nic-policy fastest: expected one of round_robin, random, ...
 *
 * A false return is a usage error: the message is already printed; the
 * program stops before doing anything and exits with KVB_CLI_USAGE.
 *
 * Conventions for choosing a range: counts that cannot be 0 start at 1; a
 * documented "0 = none/any" keeps 0 (and says so in --help); fractions and
 * probabilities are [0, 1]; ports [0, 65535] when 0 means "pick one", else
 * [1, 65535]; upper bounds are the limits the library itself checks
 * (platform, config, workload), so the option fails with the option's name
 * rather than later with a config key's.
 */
#ifndef KVB_CLI_H
#define KVB_CLI_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>

#define KVB_CLI_USAGE 2 /* exit status of a refused command line */

/* Flags of the double functions. */
#define KVB_CLI_ABOVE_MIN 1u /* min itself is refused: "greater than min" */

/* A bound of "no upper limit": integers say "at least MIN" when max is
 * INT64_MAX (UINT64_MAX for the unsigned one), doubles when max is
 * KVB_CLI_NO_MAX (values must still be finite). */
#define KVB_CLI_NO_MAX HUGE_VAL

/* Parse text as a decimal integer in [min, max] into *out.  text NULL (the
 * option was not given): true, *out untouched.  Otherwise false with the
 * message printed when text is not an integer or is out of range. */
bool kvb_cli_parse_int64(const char *prog, const char *opt, const char *text, int64_t min, int64_t max,
			 int64_t *out);
bool kvb_cli_parse_uint64(const char *prog, const char *opt, const char *text, uint64_t min, uint64_t max,
			  uint64_t *out);
bool kvb_cli_parse_uint32(const char *prog, const char *opt, const char *text, uint32_t min, uint32_t max,
			  uint32_t *out);
bool kvb_cli_parse_int(const char *prog, const char *opt, const char *text, int min, int max, int *out);

/* Parse text as a finite number in [min, max] (or (min, max] with
 * KVB_CLI_ABOVE_MIN); "nan", "inf" and trailing characters are refused. */
bool kvb_cli_parse_double(const char *prog, const char *opt, const char *text, double min, double max,
			  unsigned flags, double *out);

/* The same checks on a value already parsed (a typed GOption entry whose
 * default the range excludes, a value read from a file); opt may be any
 * label ("study.ini: [study] abort_prob"). */
bool kvb_cli_check_int64(const char *prog, const char *opt, int64_t value, int64_t min, int64_t max);
bool kvb_cli_check_double(const char *prog, const char *opt, double value, double min, double max,
			  unsigned flags);

/* Without printing: true when value is in range, else false with why set
 * to "must be ..." (for messages of one's own, e.g. a GError). */
bool kvb_cli_range_double(double value, double min, double max, unsigned flags, char *why, size_t len);

/* text one of names (a NULL-terminated list)?  *index is its position.  text
 * NULL: true, *index untouched.  Unknown: false, printed with the list. */
bool kvb_cli_parse_choice(const char *prog, const char *opt, const char *text, const char *const *names,
			  int *index);
/* Print the refusal of an enumerated value (for parsers of one's own, such
 * as a case-insensitive one); always false. */
bool kvb_cli_bad_choice(const char *prog, const char *opt, const char *text, const char *const *names);

/* "a, b, c" from a NULL-terminated list, for --help texts built from the
 * same list the parser uses (g_free it). */
char *kvb_cli_choices(const char *const *names);

/* Free what GOption stored for the entries' string, filename and array
 * options (NULL-terminated entries; unset ones are NULL). */
void kvb_cli_free_strings(const GOptionEntry *entries);

#endif /* KVB_CLI_H */
