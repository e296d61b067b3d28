//! Turns each set `OFE_TEST_*` service variable into a cfg, so tests that need an unset
//! one are ignored with the reason: see build-support/test_services.rs.

include!("../build-support/test_services.rs");
