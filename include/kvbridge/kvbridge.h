/*
 * kvbridge: KV-cache transfer between prefill and decode instances.
 * Umbrella header for the core library (libkvbridge).
 */
#ifndef KVBRIDGE_KVBRIDGE_H
#define KVBRIDGE_KVBRIDGE_H

#include <kvbridge/error.h>
#include <kvbridge/layout.h>
#include <kvbridge/policy.h>
#include <kvbridge/backend.h>
#include <kvbridge/config.h>
#include <kvbridge/connector.h>
#include <kvbridge/model.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Library version, "MAJOR.MINOR.PATCH". */
KVB_API const char *kvb_version(void);

#ifdef __cplusplus
}
#endif
#endif /* KVBRIDGE_KVBRIDGE_H */
