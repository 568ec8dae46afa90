//! Loss curves from what the OpenAI fine-tuning API publishes: metrics
//! events, and the result file of a succeeded job.

use finetune_core::{Error, Location, LossCurve, LossPoint, Result};

use super::types::JobEvent;
use crate::metrics_csv::{MetricsColumns, read_metrics_csv};

/// A metrics event's data as a loss point.
pub(crate) fn point_from_data(data: &serde_json::Value) -> Option<(LossPoint, Option<u64>)> {
    let num = |k: &str| data.get(k).and_then(serde_json::Value::as_f64).filter(|v| v.is_finite());
    let step =
        data.get("step").and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))?;
    let total = data.get("total_steps").and_then(serde_json::Value::as_u64);
    let point = LossPoint {
        step,
        epoch: num("epoch"),
        train_loss: num("train_loss"),
        validation_loss: num("full_valid_loss").or_else(|| num("valid_loss")),
        token_accuracy: num("train_mean_token_accuracy").or_else(|| num("train_accuracy")),
        validation_token_accuracy: num("full_valid_mean_token_accuracy")
            .or_else(|| num("valid_mean_token_accuracy"))
            .or_else(|| num("valid_accuracy")),
        learning_rate: num("learning_rate"),
    };
    Some((point, total))
}

/// The result file's columns, under the names either host uses.
const RESULT_COLUMNS: MetricsColumns = MetricsColumns {
    step: &["step"],
    epoch: &[],
    train_loss: &["train_loss"],
    train_accuracy: &["train_mean_token_accuracy", "train_accuracy"],
    validation_loss: &["full_valid_loss", "valid_loss"],
    validation_accuracy: &[
        "full_valid_mean_token_accuracy",
        "valid_mean_token_accuracy",
        "validation_mean_token_accuracy",
        "valid_accuracy",
    ],
    required_loss: None,
    skip_rows_without_step: false,
};

/// The loss curve from a job's result file: a CSV with a header naming
/// `step`, `train_loss`, `train_accuracy` (or `train_mean_token_accuracy`),
/// `valid_loss`, `valid_mean_token_accuracy` (validation cells may be
/// empty). OpenAI serves the file base64-encoded; both encodings are read.
/// A cell that is not a number is an error naming the file, line and column.
pub fn curve_from_result_csv(file: &str, content: &[u8]) -> Result<LossCurve> {
    let decoded;
    let text = {
        let trimmed = content.trim_ascii();
        if trimmed.starts_with(b"step") || trimmed.is_empty() {
            trimmed
        } else {
            use base64::Engine as _;
            let compact: Vec<u8> =
                trimmed.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
            decoded = base64::engine::general_purpose::STANDARD.decode(compact).map_err(|_| {
                Error::invalid_at(
                    Location::file(file).with_line(1),
                    "the result file is neither CSV with a `step` column nor base64 of one",
                )
            })?;
            decoded.trim_ascii()
        }
    };
    let mut curve = LossCurve::new();
    if !text.is_empty() {
        read_metrics_csv(&mut curve, file, text, &RESULT_COLUMNS)?;
    }
    Ok(curve)
}

/// The loss curve from metrics events.
pub fn curve_from_events(events: &[JobEvent]) -> LossCurve {
    let mut curve = LossCurve::new();
    for e in events {
        if e.kind == "metrics"
            && let Some((point, _)) = e.data.as_ref().and_then(point_from_data)
        {
            curve.upsert(point);
        }
    }
    curve
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_csv_with_empty_validation_cells() {
        let csv = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n\
                   1,2.5,0.1,,\n2,2.0,0.2,2.2,0.15\n3,1.5,0.3,,\n";
        let curve = curve_from_result_csv("file-r", csv.as_bytes()).unwrap();
        assert_eq!(curve.train_series(), vec![(1, 2.5), (2, 2.0), (3, 1.5)]);
        assert_eq!(curve.validation_series(), vec![(2, 2.2)]);
        assert_eq!(curve.points()[1].validation_token_accuracy, Some(0.15));
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(csv);
        assert_eq!(curve_from_result_csv("file-r", encoded.as_bytes()).unwrap(), curve);
    }

    #[test]
    fn result_csv_errors_name_file_line_and_column() {
        let csv = "step,train_loss\n1,2.5\n2,oops\n";
        let err = curve_from_result_csv("file-r", csv.as_bytes()).unwrap_err().to_string();
        assert!(
            err.contains("file-r") && err.contains("line 3") && err.contains("train_loss"),
            "{err}"
        );
        let err = curve_from_result_csv("file-r", b"@@@ not csv").unwrap_err().to_string();
        assert!(err.contains("file-r"), "{err}");
    }

    #[test]
    fn events_make_a_curve() {
        let event = |step: u64, data: serde_json::Value| JobEvent {
            id: format!("e{step}"),
            created_at: None,
            level: "info".into(),
            message: String::new(),
            kind: "metrics".into(),
            data: Some(data),
        };
        let events = vec![
            event(
                2,
                serde_json::json!({"step": 2, "train_loss": 1.0, "valid_loss": 1.5, "total_steps": 4}),
            ),
            event(1, serde_json::json!({"step": 1, "train_loss": 2.0, "total_steps": 4})),
        ];
        let curve = curve_from_events(&events);
        assert_eq!(curve.train_series(), vec![(1, 2.0), (2, 1.0)]);
        assert_eq!(curve.validation_series(), vec![(2, 1.5)]);
    }
}
