//! Test tools for Cnerium.
#![warn(missing_docs)]

pub mod conformance;
pub mod faulty;
mod gate;
pub mod model;
pub mod properties;
pub mod sim;
pub mod sink;

pub use faulty::{Call, Fault, FaultPlan, FaultyStore, StoreMethod, Trigger};
pub use gate::{Gate, GateWait, YieldNow, yield_now};
pub use sim::{
    Behaviour, HandlerRun, Outcome, RequestId, Sent, SimRequest, SimResponse, Simulation,
    SimulationBuilder, block_on,
};
pub use sink::RecordingSink;
