//! The two inputs of a task (partition p of the activation topic and of the ACK topic), and
//! values kept once per input: offsets, caught-up flags, buffer counts.

use std::ops::{Index, IndexMut};

use serde::{Deserialize, Serialize};

/// Which input topic a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Side {
    /// The activation topic (`activation`).
    Activation,
    /// The ACK topic (`control.activation.ack`).
    Ack,
}

impl Side {
    /// Both sides, activation first (the order ties are broken in, semantics §4).
    pub const BOTH: [Side; 2] = [Side::Activation, Side::Ack];

    pub fn other(self) -> Side {
        match self {
            Side::Activation => Side::Ack,
            Side::Ack => Side::Activation,
        }
    }

    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Activation => "activation",
            Side::Ack => "ack",
        }
    }
}

/// One value per side. Stored (commit markers) as the two values in side order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PerSide<T> {
    pub activation: T,
    pub ack: T,
}

impl<T> PerSide<T> {
    pub const fn new(activation: T, ack: T) -> Self {
        PerSide { activation, ack }
    }

    /// The same value on both sides.
    pub fn both(value: T) -> Self
    where
        T: Clone,
    {
        PerSide {
            activation: value.clone(),
            ack: value,
        }
    }

    /// Builds each side's value from the side.
    pub fn from_fn(mut f: impl FnMut(Side) -> T) -> Self {
        PerSide {
            activation: f(Side::Activation),
            ack: f(Side::Ack),
        }
    }

    /// Each side's value computed from a reference to it.
    pub fn map_ref<U>(&self, mut f: impl FnMut(&T) -> U) -> PerSide<U> {
        PerSide {
            activation: f(&self.activation),
            ack: f(&self.ack),
        }
    }

    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> PerSide<U> {
        PerSide {
            activation: f(self.activation),
            ack: f(self.ack),
        }
    }

    /// (side, value) for both sides, activation first.
    pub fn iter(&self) -> impl Iterator<Item = (Side, &T)> {
        [(Side::Activation, &self.activation), (Side::Ack, &self.ack)].into_iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        [&self.activation, &self.ack].into_iter()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        [&mut self.activation, &mut self.ack].into_iter()
    }
}

impl<T> Index<Side> for PerSide<T> {
    type Output = T;
    fn index(&self, side: Side) -> &T {
        match side {
            Side::Activation => &self.activation,
            Side::Ack => &self.ack,
        }
    }
}

impl<T> IndexMut<Side> for PerSide<T> {
    fn index_mut(&mut self, side: Side) -> &mut T {
        match side {
            Side::Activation => &mut self.activation,
            Side::Ack => &mut self.ack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_side_is_stored_as_the_two_values_in_side_order() {
        // Commit markers were `[i64; 2]` before this type: the encoding must not change.
        let config = bincode::config::standard();
        let as_struct = bincode::serde::encode_to_vec(PerSide::new(7i64, -3i64), config).unwrap();
        let as_array = bincode::serde::encode_to_vec([7i64, -3i64], config).unwrap();
        assert_eq!(as_struct, as_array);
    }

    #[test]
    fn index_and_other() {
        let mut v = PerSide::new(1, 2);
        v[Side::Ack] += 10;
        assert_eq!((v[Side::Activation], v[Side::Ack]), (1, 12));
        assert_eq!(Side::Activation.other(), Side::Ack);
        assert_eq!(
            PerSide::from_fn(Side::as_str),
            PerSide::new("activation", "ack")
        );
    }
}
