//! The model-based properties hold for the reference store.

use cnerium_store_memory::MemoryStore;
use cnerium_testkit::properties;

#[test]
fn memory_store_keeps_every_property_on_random_schedules() {
    if let Err(failure) = properties::check_store(MemoryStore::new, properties::Search::default()) {
        panic!("{failure}");
    }
}
