//! The billing guard: plans (dry runs) with estimated hourly costs from a
//! user-supplied price table.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::deployer::Deployment;

/// Prices per capacity unit and hour, by SKU (`Standard`, `provisioned`, …),
/// in the user's currency. Nothing is looked up online: prices change and
/// differ by contract, so the user says what they pay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PriceTable {
    /// Price per capacity unit per hour, by SKU.
    pub per_unit_hour: BTreeMap<String, f64>,
}

impl PriceTable {
    /// Adds a SKU's price per unit and hour.
    pub fn with(mut self, sku: impl Into<String>, per_unit_hour: f64) -> Self {
        self.per_unit_hour.insert(sku.into(), per_unit_hour);
        self
    }

    /// The hourly cost of `capacity` units of `sku`, when priced.
    pub fn hourly(&self, sku: &str, capacity: u32) -> Option<f64> {
        self.per_unit_hour.get(sku).map(|p| p * f64::from(capacity))
    }
}

/// A deployment a plan would create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedDeployment {
    /// Its name.
    pub name: String,
    /// The version it would serve.
    pub version: u64,
    /// Its SKU.
    pub sku: String,
    /// Its capacity.
    pub capacity: u32,
    /// Its estimated hourly cost, when the SKU is priced.
    pub hourly_cost: Option<f64>,
}

/// What an operation would create and delete, and what the model's
/// deployments would cost per hour before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The saved model.
    pub model: String,
    /// The version the operation is about.
    pub version: u64,
    /// The deployment it would create, if any.
    pub create: Option<PlannedDeployment>,
    /// The deployments it would delete.
    pub delete: Vec<String>,
    /// The model's deployments now.
    pub current: Vec<Deployment>,
    /// Estimated hourly cost now (when every deployment is priced).
    pub hourly_cost_before: Option<f64>,
    /// Estimated hourly cost after (when every deployment is priced).
    pub hourly_cost_after: Option<f64>,
    /// SKUs the price table does not know.
    pub unpriced: Vec<String>,
}

impl Plan {
    /// Fills in the costs from `prices`.
    pub(crate) fn finish(&mut self, prices: &PriceTable) {
        let mut unpriced = Vec::new();
        let mut price = |sku: &str, capacity: u32| {
            let p = prices.hourly(sku, capacity);
            if p.is_none() && !unpriced.iter().any(|u| u == sku) {
                unpriced.push(sku.to_owned());
            }
            p
        };
        let before: Option<f64> = self.current.iter().map(|d| price(&d.sku, d.capacity)).sum();
        let after_existing: Option<f64> = self
            .current
            .iter()
            .filter(|d| !self.delete.contains(&d.id))
            .map(|d| price(&d.sku, d.capacity))
            .sum();
        if let Some(c) = &mut self.create {
            c.hourly_cost = price(&c.sku, c.capacity);
        }
        let created = match &self.create {
            Some(c) => c.hourly_cost,
            None => Some(0.0),
        };
        self.hourly_cost_before = before;
        self.hourly_cost_after = after_existing.zip(created).map(|(a, b)| a + b);
        self.unpriced = unpriced;
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cost = |c: Option<f64>| c.map_or("unpriced".to_owned(), |c| format!("{c:.2}/h"));
        writeln!(f, "plan for {} version {}:", self.model, self.version)?;
        match &self.create {
            Some(c) => writeln!(
                f,
                "  create {} ({} x{}, {})",
                c.name,
                c.sku,
                c.capacity,
                cost(c.hourly_cost)
            )?,
            None => writeln!(f, "  create nothing (a ready deployment exists)")?,
        }
        for id in &self.delete {
            writeln!(f, "  delete {id}")?;
        }
        write!(
            f,
            "  estimated cost: {} now, {} after",
            cost(self.hourly_cost_before),
            cost(self.hourly_cost_after)
        )?;
        if !self.unpriced.is_empty() {
            write!(f, " (no price for {})", self.unpriced.join(", "))?;
        }
        Ok(())
    }
}
