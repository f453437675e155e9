//! Venue gateway: `dmr-agent` (the daemon) and `dmr-tech` (the technician CLI), sharing one
//! Modbus lock driver. Filled in by the bus-driver and gateway-daemon work.

pub mod agent;
pub mod bus;
pub mod tech;
