//! Cnerium facade
