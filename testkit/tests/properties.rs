//! The model-based properties hold for the reference store, under the default engine
//! settings and under the IETF preset without stored server errors.

use cnerium_core::EngineConfig;
use cnerium_store_memory::MemoryStore;
use cnerium_testkit::Simulation;
use cnerium_testkit::properties::{self, Search};
use proptest::prelude::*;

#[test]
fn memory_store_keeps_every_property_on_random_schedules() {
    if let Err(failure) = properties::check_store(MemoryStore::new, Search::default()) {
        panic!("{failure}");
    }
}

#[test]
fn the_ietf_preset_without_stored_server_errors_keeps_every_property() {
    let config = EngineConfig {
        store_server_errors: false,
        ..EngineConfig::ietf()
    };
    let simulation = || {
        Simulation::builder(MemoryStore::new())
            .config(config.clone())
            .build()
    };
    if let Err(failure) = properties::check_simulations(simulation, Search::default()) {
        panic!("{failure}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(properties::cases().min(64)))]

    /// The same check written as a plain `proptest!` block, as a user would.
    #[test]
    fn schedules_on_the_memory_store_match_the_model(schedule in properties::schedule()) {
        if let Err(violation) = properties::check_schedule(MemoryStore::new(), &schedule) {
            return Err(TestCaseError::fail(violation.to_string()));
        }
    }
}
