//! Hyperparameters: each one either left to the provider (`"auto"`) or set.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// A hyperparameter the provider may choose (`Auto`) or the user sets.
/// Serializes as the string `"auto"` or the value itself, as OpenAI's API does.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Setting<T> {
    /// The provider chooses.
    #[default]
    Auto,
    /// The user's value.
    Value(T),
}

impl<T: Copy> Setting<T> {
    /// The value, or `None` for `Auto`.
    pub fn value(&self) -> Option<T> {
        match self {
            Self::Auto => None,
            Self::Value(v) => Some(*v),
        }
    }

    /// The value, or `default` for `Auto`.
    pub fn unwrap_or(&self, default: T) -> T {
        self.value().unwrap_or(default)
    }
}

impl<T> From<T> for Setting<T> {
    fn from(v: T) -> Self {
        Self::Value(v)
    }
}

impl<T: fmt::Display> fmt::Display for Setting<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Value(v) => v.fmt(f),
        }
    }
}

impl<T: Serialize> Serialize for Setting<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => serializer.serialize_str("auto"),
            Self::Value(v) => v.serialize(serializer),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Setting<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<T> {
            Str(String),
            Value(T),
        }
        match Raw::<T>::deserialize(deserializer)? {
            Raw::Str(s) if s == "auto" => Ok(Self::Auto),
            Raw::Str(s) => {
                Err(de::Error::custom(format!("expected \"auto\" or a value, got \"{s}\"")))
            }
            Raw::Value(v) => Ok(Self::Value(v)),
        }
    }
}

/// How the learning rate is given: an absolute value (local training,
/// Bedrock) or a multiplier of the provider's default (OpenAI, Azure).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LearningRate {
    /// The learning rate itself, e.g. `1e-4`.
    Absolute(f64),
    /// A multiplier of the provider's own default, e.g. `2.0`.
    Multiplier(f64),
}

impl fmt::Display for LearningRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Absolute(v) => write!(f, "{v}"),
            Self::Multiplier(v) => write!(f, "×{v}"),
        }
    }
}

/// The hyperparameters every provider understands. Provider-specific ones
/// (LoRA rank, warmup steps, …) go into [`crate::JobSpec::extras`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Hyperparameters {
    /// Passes over the training data.
    #[serde(default)]
    pub epochs: Setting<u32>,
    /// Examples per optimizer step.
    #[serde(default)]
    pub batch_size: Setting<u32>,
    /// The learning rate or its multiplier.
    #[serde(default)]
    pub learning_rate: Setting<LearningRate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_or_value_round_trips() {
        let h = Hyperparameters {
            epochs: Setting::Value(3),
            batch_size: Setting::Auto,
            learning_rate: Setting::Value(LearningRate::Multiplier(0.5)),
        };
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, r#"{"epochs":3,"batch_size":"auto","learning_rate":{"multiplier":0.5}}"#);
        assert_eq!(serde_json::from_str::<Hyperparameters>(&json).unwrap(), h);
        assert_eq!(
            serde_json::from_str::<Hyperparameters>("{}").unwrap(),
            Hyperparameters::default()
        );
        assert!(serde_json::from_str::<Hyperparameters>(r#"{"epochs":"many"}"#).is_err());
        assert!(serde_json::from_str::<Hyperparameters>(r#"{"epochs":-1}"#).is_err());
    }
}
