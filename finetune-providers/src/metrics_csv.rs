//! One reader for the metrics CSVs providers publish: OpenAI's and Azure
//! OpenAI's result file (`step, train_loss, train_accuracy, valid_loss,
//! …`) and Bedrock's `step_wise_training_metrics.csv` and
//! `validation_metrics.csv` (`step_number, epoch_number, training_loss` or
//! `validation_loss`). Each backend names its columns; the reading, the
//! checks and the errors (file, line, column) are the same.

use finetune_core::{Error, Location, LossCurve, LossPoint, Result};

/// Header names feeding each loss-point field, first match wins.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MetricsColumns {
    pub(crate) step: &'static [&'static str],
    pub(crate) epoch: &'static [&'static str],
    pub(crate) train_loss: &'static [&'static str],
    pub(crate) train_accuracy: &'static [&'static str],
    pub(crate) validation_loss: &'static [&'static str],
    pub(crate) validation_accuracy: &'static [&'static str],
    /// A loss column the file must have (Bedrock's files each carry one).
    pub(crate) required_loss: Option<&'static str>,
    /// Rows without a step are skipped (Bedrock) instead of refused.
    pub(crate) skip_rows_without_step: bool,
}

/// Adds the rows of a metrics CSV to `curve` (a step already there gets the
/// row's fields). Empty cells are absent values; a row with no value is
/// skipped. A cell that is not a number, a negative step or a non-finite
/// loss is an error naming the file, line and column.
pub(crate) fn read_metrics_csv(
    curve: &mut LossCurve,
    file: &str,
    content: &[u8],
    columns: &MetricsColumns,
) -> Result<()> {
    let at_line = |line: u64| Location::file(file).with_line(line);
    let mut reader =
        csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(content);
    let headers = reader
        .headers()
        .map_err(|e| Error::invalid_at(at_line(1), format!("unreadable header: {e}")))?
        .clone();
    let col = |names: &[&str]| names.iter().find_map(|n| headers.iter().position(|h| h == *n));
    let Some(step_col) = col(columns.step) else {
        return Err(Error::invalid_at(
            at_line(1),
            format!("the file has no `{}` column", columns.step.first().unwrap_or(&"step")),
        ));
    };
    if let Some(required) = columns.required_loss
        && col(&[required]).is_none()
    {
        return Err(Error::invalid_at(
            at_line(1),
            format!(
                "expected the columns {} and {required}, got {:?}",
                headers[step_col].to_owned(),
                headers.iter().collect::<Vec<_>>()
            ),
        ));
    }
    let (epoch, train, train_acc) =
        (col(columns.epoch), col(columns.train_loss), col(columns.train_accuracy));
    let (valid, valid_acc) = (col(columns.validation_loss), col(columns.validation_accuracy));
    for (i, record) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let record = record.map_err(|e| Error::invalid_at(at_line(line), e.to_string()))?;
        let cell = |c: Option<usize>| -> Result<Option<f64>> {
            let Some(c) = c else { return Ok(None) };
            match record.get(c).unwrap_or("") {
                "" => Ok(None),
                raw => raw.parse::<f64>().map(Some).map_err(|_| {
                    Error::invalid_at(
                        at_line(line).with_column(&headers[c]),
                        format!("`{raw}` is not a number"),
                    )
                }),
            }
        };
        let step = match cell(Some(step_col))? {
            Some(step) if step >= 0.0 && step.is_finite() => step as u64,
            Some(step) => {
                return Err(Error::invalid_at(
                    at_line(line).with_column(&headers[step_col]),
                    format!("step {step} is out of range"),
                ));
            }
            None if columns.skip_rows_without_step => continue,
            None => {
                return Err(Error::invalid_at(
                    at_line(line).with_column(&headers[step_col]),
                    "the step is missing",
                ));
            }
        };
        let point = LossPoint {
            step,
            epoch: cell(epoch)?,
            train_loss: cell(train)?,
            token_accuracy: cell(train_acc)?,
            validation_loss: cell(valid)?,
            validation_token_accuracy: cell(valid_acc)?,
            ..LossPoint::default()
        };
        for (loss, c) in [(point.train_loss, train), (point.validation_loss, valid)] {
            if let (Some(loss), Some(c)) = (loss, c)
                && !loss.is_finite()
            {
                return Err(Error::invalid_at(
                    at_line(line).with_column(&headers[c]),
                    format!("step {step} with loss {loss} is out of range"),
                ));
            }
        }
        let measured = [
            point.train_loss,
            point.validation_loss,
            point.token_accuracy,
            point.validation_token_accuracy,
        ];
        if measured.iter().any(Option::is_some) {
            curve.upsert(point);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: MetricsColumns = MetricsColumns {
        step: &["step"],
        epoch: &[],
        train_loss: &["train_loss"],
        train_accuracy: &[],
        validation_loss: &["valid_loss"],
        validation_accuracy: &[],
        required_loss: None,
        skip_rows_without_step: false,
    };

    #[test]
    fn rows_merge_into_the_curve_and_empty_rows_add_nothing() {
        let mut curve = LossCurve::new();
        let csv = b"step,train_loss,valid_loss\n1,2.0,\n2,1.5,1.7\n3,,\n";
        read_metrics_csv(&mut curve, "r.csv", csv, &COLUMNS).expect("valid file");
        assert_eq!(curve.len(), 2);
        assert_eq!(curve.points()[1].validation_loss, Some(1.7));
    }

    #[test]
    fn bad_cells_name_file_line_and_column() {
        for (csv, wanted) in [
            (&b"step,train_loss\n1,abc\n"[..], "line 2, column `train_loss`"),
            (b"step,train_loss\n-1,2\n", "out of range"),
            (b"step,train_loss\n1,inf\n", "out of range"),
            (b"step,train_loss\n,2\n", "the step is missing"),
            (b"loss\n1\n", "no `step` column"),
        ] {
            let err = read_metrics_csv(&mut LossCurve::new(), "r.csv", csv, &COLUMNS)
                .expect_err("a bad file");
            let shown = err.to_string();
            assert!(shown.contains("r.csv") && shown.contains(wanted), "{shown}");
        }
    }
}
