/* Every check suite of the core test runner (one suite per file). */
#ifndef KVB_TESTS_SUITES_H
#define KVB_TESTS_SUITES_H

#include <check.h>

Suite *kvb_suite_error(void);      /* check_error.c */
Suite *kvb_suite_layout(void);     /* check_layout.c */
Suite *kvb_suite_tp(void);         /* check_tp.c */
Suite *kvb_suite_model(void);      /* check_model.c */
Suite *kvb_suite_policy(void);     /* check_policy.c */
Suite *kvb_suite_backend(void);    /* check_backend.c */
Suite *kvb_suite_config(void);     /* check_config.c */
Suite *kvb_suite_wire(void);       /* check_wire.c */
Suite *kvb_suite_loop(void);       /* check_loop.c */
Suite *kvb_suite_fault(void);      /* check_fault.c */
Suite *kvb_suite_producer(void);   /* check_producer.c */
Suite *kvb_suite_consumer(void);   /* check_consumer.c */
Suite *kvb_suite_lifecycle(void);  /* check_lifecycle.c */
Suite *kvb_suite_misuse(void);     /* check_misuse.c */
Suite *kvb_suite_e2e(void);        /* check_e2e.c */
Suite *kvb_suite_lease(void);      /* check_lease.c */

/* tests/check_sim (built with the sim backend) */
Suite *kvb_suite_workload(void);   /* check_workload.c */
Suite *kvb_suite_platform(void);   /* check_platform.c */
Suite *kvb_suite_sim(void);        /* check_sim.c */

/* tests/check_hw (built with the hw backend) */
Suite *kvb_suite_mc_wire(void);    /* check_mc_wire.c */
Suite *kvb_suite_vllm_wire(void);  /* check_vllm_wire.c */
Suite *kvb_suite_vllm_xfer_wire(void); /* check_vllm_xfer_wire.c */
Suite *kvb_suite_vllm_xfer_resp(void); /* check_vllm_xfer_resp.c */
Suite *kvb_suite_vllm_bootstrap_wire(void); /* check_vllm_bootstrap_wire.c */
Suite *kvb_suite_http(void);       /* check_http.c */
Suite *kvb_suite_acl(void);        /* check_acl.c */
Suite *kvb_suite_rdma_window_wire(void); /* check_rdma_window_wire.c */
Suite *kvb_suite_tls(void);        /* check_tls.c */
Suite *kvb_suite_proxy_vllm(void); /* check_proxy_vllm.c (src/tools/kvb_proxy_vllm.c) */
Suite *kvb_suite_hw_backend(void); /* check_hw_backend.c */
Suite *kvb_suite_hw_vllm2(void); /* check_hw_vllm2.c */

#endif
