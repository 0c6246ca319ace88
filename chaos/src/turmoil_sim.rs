//! Full-stack simulation on turmoil (in progress).
use crate::checker::Report;

#[derive(Clone, Debug, Default)]
pub struct TurmoilFaults {
    pub partitions: u64,
}

impl TurmoilFaults {
    pub fn total(&self) -> u64 {
        self.partitions
    }
}

pub struct TurmoilRun {
    pub nodes: u64,
    pub report: Report,
    pub faults: TurmoilFaults,
}

impl TurmoilRun {
    pub fn summary(&self) -> String {
        format!("{:?}", self.faults)
    }
}

pub fn run(_seed: u64, nodes: u64) -> TurmoilRun {
    TurmoilRun {
        nodes,
        report: Report::default(),
        faults: TurmoilFaults::default(),
    }
}
