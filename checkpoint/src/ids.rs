//! The numbers the checkpoint protocol speaks in, as types of their own: an [`Epoch`], a
//! [`Generation`] and a [`WorkerIndex`] cannot be mixed up with each other or with a
//! count.
//!
//! Each is stored as its bare number (`serde(transparent)`), so manifests and reports read
//! and write exactly as before, and prints as that number.

use serde::{Deserialize, Serialize};

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(n: $inner) -> Self {
                $name(n)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }
    };
}

id!(
    /// A checkpoint epoch: every record's timestamp, and the name of the checkpoint that
    /// covers the records of every epoch up to it.
    Epoch(u64)
);

id!(
    /// A run of a job: larger than that of every earlier run. Outputs and parts carry the
    /// generation that wrote them, and a newer generation fences the older ones.
    Generation(u64)
);

id!(
    /// A worker's index in the cluster (timely numbers the workers of process `p` from
    /// `p * workers`).
    WorkerIndex(usize)
);

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl Generation {
    /// The generation after this one.
    pub fn next(self) -> Generation {
        Generation(self.0 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stored_and_printed_as_their_bare_numbers() {
        assert_eq!(serde_json::to_string(&Epoch(7)).unwrap(), "7");
        assert_eq!(
            serde_json::from_str::<Generation>("3").unwrap(),
            Generation(3)
        );
        assert_eq!(WorkerIndex(2).to_string(), "2");
        assert_eq!("12".parse::<Epoch>().unwrap(), Epoch(12));
        assert_eq!(Epoch(1).next(), Epoch(2));
        assert!(Generation(1) < Generation(2));
    }
}
