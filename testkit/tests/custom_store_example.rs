//! Builds the `custom_store` example of the facade crate here too, so that the testkit's
//! own test run proves the example compiles against the testkit and that its tests pass
//! (they run as part of this test binary).

#[allow(dead_code)]
#[path = "../../examples/custom_store/main.rs"]
mod example;
