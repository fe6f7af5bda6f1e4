/*
 * Warnings for the application's log (params.warn_fn), rate-limited: a
 * storm of garbage from one peer must not fill the disk, nor hide what
 * other peers do.
 *
 * A warning's reason is its call site (the format string); its peer the
 * address the caller names, if any.  Per (reason, peer), WARN_BURST lines
 * are logged in a window of WARN_WINDOW_NS; per reason across all peers,
 * WARN_REASON_BURST (peer names can be forged or many).  What is held back
 * is counted: when the window ends, one line says how many warnings like
 * the last one were not logged (stats.warnings_suppressed counts them all).
 * At most WARN_KEYS keys are remembered; past that, all peers of a reason
 * share one key.
 */
#include "config.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "events/kvb_hw_events.h"

#define WARN_WINDOW_NS (10 * G_GUINT64_CONSTANT(1000000000))
#define WARN_BURST 5u            /* lines per (reason, peer) and window */
#define WARN_REASON_BURST 20u    /* lines per reason and window, all peers */
#define WARN_KEYS 1024u

typedef struct warn_rate {
	uint64_t window_start_ns;
	uint32_t logged;
	uint64_t held;              /* not logged in this window */
	char last[256];             /* the last one held back */
} warn_rate_t;

struct hw_warn_state {
	GHashTable *rates;          /* "fmt-pointer|peer" -> warn_rate_t* */
	hw_deadline_t *flush;       /* the end of a window with something held */
};

static void emit(hw_t *hw, const char *line)
{
	const kvb_hw_params_t *prm = &hw->p;
	if (prm->warn_fn)
		prm->warn_fn(prm->warn_arg, line);
	else
		fprintf(stderr, "kvbridge-hw[%s]: warning: %s\n", hw->segment, line);
}

static void say_held(hw_t *hw, warn_rate_t *r, uint64_t window_ns)
{
	char line[sizeof(r->last) + 128];
	g_snprintf(line, sizeof(line), "%" PRIu64 " more warning%s like this one not logged in %.0f s: %s",
		   r->held, r->held == 1 ? "" : "s", (double)window_ns / 1e9, r->last);
	emit(hw, line);
	r->held = 0;
}

/* Windows that ended: their counts said, their keys forgotten. */
static void warn_flush(void *obj)
{
	hw_t *hw = obj;
	struct hw_warn_state *w = hw->warn;
	uint64_t now = hw_now_ns();
	bool pending = false;
	GHashTableIter it;
	gpointer v;
	g_hash_table_iter_init(&it, w->rates);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		warn_rate_t *r = v;
		if (now - r->window_start_ns < WARN_WINDOW_NS) {
			pending |= r->held > 0;
			continue;
		}
		if (r->held)
			say_held(hw, r, now - r->window_start_ns);
		g_hash_table_iter_remove(&it);
	}
	if (pending)
		hw_deadline_arm(w->flush, WARN_WINDOW_NS / 2);
}

static warn_rate_t *rate_of(struct hw_warn_state *w, const char *key, uint64_t now)
{
	warn_rate_t *r = g_hash_table_lookup(w->rates, key);
	if (!r) {
		r = g_new0(warn_rate_t, 1);
		r->window_start_ns = now;
		g_hash_table_insert(w->rates, g_strdup(key), r);
	}
	return r;
}

/* True when a line may go out now under r; counts it either way. */
static bool rate_admit(hw_t *hw, warn_rate_t *r, uint32_t burst, uint64_t now, const char *line)
{
	if (now - r->window_start_ns >= WARN_WINDOW_NS) {
		if (r->held)
			say_held(hw, r, now - r->window_start_ns);
		r->window_start_ns = now;
		r->logged = 0;
	}
	if (r->logged < burst) {
		r->logged++;
		return true;
	}
	r->held++;
	g_strlcpy(r->last, line, sizeof(r->last));
	return false;
}

static void vwarn(hw_t *hw, const char *peer, const char *fmt, va_list ap)
{
	if (!hw->p.warn_fn && !hw->debug)
		return;
	char line[KVB_ERR_MSG_MAX + 256];
	g_vsnprintf(line, sizeof(line), fmt, ap);
	if (!hw->warn) {
		hw->warn = g_new0(struct hw_warn_state, 1);
		hw->warn->rates = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
		hw->warn->flush = hw_deadline_new(hw, warn_flush, hw);
	}
	struct hw_warn_state *w = hw->warn;
	uint64_t now = hw_now_ns();
	char key[KVB_MC_NAME_MAX + 32];
	g_snprintf(key, sizeof(key), "%p|", (const void *)fmt);
	warn_rate_t *reason = rate_of(w, key, now);
	if (peer && *peer && g_hash_table_size(w->rates) < WARN_KEYS)
		g_snprintf(key, sizeof(key), "%p|%s", (const void *)fmt, peer);
	warn_rate_t *mine = rate_of(w, key, now);
	bool ok = mine == reason ? rate_admit(hw, reason, WARN_BURST, now, line)
				 : rate_admit(hw, mine, WARN_BURST, now, line) &&
				   rate_admit(hw, reason, WARN_REASON_BURST, now, line);
	if (ok) {
		emit(hw, line);
		return;
	}
	hw->stats.warnings_suppressed++;
	hw_deadline_arm(w->flush, WARN_WINDOW_NS);
}

void hw_warn(hw_t *hw, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vwarn(hw, NULL, fmt, ap);
	va_end(ap);
}

void hw_warn_from(hw_t *hw, const char *peer, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vwarn(hw, peer, fmt, ap);
	va_end(ap);
}

void hw_warn_fini(hw_t *hw)
{
	struct hw_warn_state *w = hw->warn;
	if (!w)
		return;
	/* what was held back is said before the instance goes */
	GHashTableIter it;
	gpointer v;
	g_hash_table_iter_init(&it, w->rates);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		warn_rate_t *r = v;
		if (r->held)
			say_held(hw, r, hw_now_ns() - r->window_start_ns);
	}
	hw_deadline_free(w->flush);
	g_hash_table_destroy(w->rates);
	g_free(w);
	hw->warn = NULL;
}
