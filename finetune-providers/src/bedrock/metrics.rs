//! The loss curve of a job: its metrics CSVs on S3, else the final figures
//! the job itself reports.

use finetune_core::{LossCurve, LossPoint, Result};

use super::BedrockProvider;
use super::client::job_short_id;
use super::s3::S3Uri;
use crate::metrics_csv::{MetricsColumns, read_metrics_csv};

impl BedrockProvider {
    /// The loss curve from the job's metrics CSVs on S3, or from the job's
    /// final figures when the CSVs are not there.
    pub(super) async fn curve_of(
        &self,
        out: &aws_sdk_bedrock::operation::get_model_customization_job::GetModelCustomizationJobOutput,
    ) -> Result<LossCurve> {
        let mut curve = LossCurve::new();
        if let Some(output) = out.output_data_config() {
            let uri = S3Uri::parse(output.s3_uri())?;
            let bucket = self.bucket_for(&uri)?;
            let folder =
                uri.key(&format!("model-customization-job-{}/", job_short_id(out.job_arn())));
            let keys = bucket.keys(&folder).await?;
            for key in &keys {
                let validation = if key.ends_with("step_wise_training_metrics.csv") {
                    false
                } else if key.ends_with("validation_metrics.csv") {
                    true
                } else {
                    continue;
                };
                let bytes = bucket.get(key).await?;
                merge_metrics_csv(
                    &mut curve,
                    &format!("s3://{}/{key}", uri.bucket),
                    &bytes,
                    validation,
                )?;
            }
        }
        if curve.is_empty() {
            curve = final_figures(out);
        }
        Ok(curve)
    }
}

/// The single point Bedrock reports in the job itself.
pub(super) fn final_figures(
    out: &aws_sdk_bedrock::operation::get_model_customization_job::GetModelCustomizationJobOutput,
) -> LossCurve {
    let mut curve = LossCurve::new();
    if let Some(loss) = out.training_metrics().and_then(|m| m.training_loss()) {
        let mut point = LossPoint::train(0, f64::from(loss));
        point.validation_loss =
            out.validation_metrics().first().and_then(|v| v.validation_loss()).map(f64::from);
        curve.upsert(point);
    }
    curve
}

/// Adds the rows of a Bedrock metrics CSV to `curve`: `step_number`,
/// `epoch_number` and `training_loss` (or `validation_loss`). A malformed
/// file is an error naming the file, line and column.
pub fn merge_metrics_csv(
    curve: &mut LossCurve,
    file: &str,
    content: &[u8],
    validation: bool,
) -> Result<()> {
    let columns = if validation { &VALIDATION_COLUMNS } else { &TRAINING_COLUMNS };
    read_metrics_csv(curve, file, content, columns)
}

/// `step_wise_training_metrics.csv`.
const TRAINING_COLUMNS: MetricsColumns = MetricsColumns {
    step: &["step_number"],
    epoch: &["epoch_number"],
    train_loss: &["training_loss"],
    required_loss: Some("training_loss"),
    skip_rows_without_step: true,
    ..NO_COLUMNS
};

/// `validation_metrics.csv`.
const VALIDATION_COLUMNS: MetricsColumns = MetricsColumns {
    step: &["step_number"],
    epoch: &["epoch_number"],
    validation_loss: &["validation_loss"],
    required_loss: Some("validation_loss"),
    skip_rows_without_step: true,
    ..NO_COLUMNS
};

const NO_COLUMNS: MetricsColumns = MetricsColumns {
    step: &[],
    epoch: &[],
    train_loss: &[],
    train_accuracy: &[],
    validation_loss: &[],
    validation_accuracy: &[],
    required_loss: None,
    skip_rows_without_step: false,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_csvs_merge_into_one_curve() {
        let mut curve = LossCurve::new();
        let train = b"step_number,epoch_number,training_loss,perplexity\n0,0,2.5,12.1\n1,0,2.0,7.4\n2,1,1.5,4.5\n";
        let valid = b"step_number, epoch_number, validation_loss, perplexity\n2, 1, 1.8, 6.0\n";
        merge_metrics_csv(&mut curve, "t.csv", train, false).expect("training");
        merge_metrics_csv(&mut curve, "v.csv", valid, true).expect("validation");
        assert_eq!(curve.train_series(), vec![(0, 2.5), (1, 2.0), (2, 1.5)]);
        assert_eq!(curve.validation_series(), vec![(2, 1.8)]);
        assert_eq!(curve.points()[2].epoch, Some(1.0));
    }

    #[test]
    fn a_malformed_metrics_csv_names_file_line_and_column() {
        let mut curve = LossCurve::new();
        let bad = b"step_number,epoch_number,training_loss\n0,0,2.5\n1,0,lots\n";
        let err = merge_metrics_csv(&mut curve, "s3://b/m.csv", bad, false).expect_err("bad cell");
        let shown = err.to_string();
        assert!(
            shown.contains("s3://b/m.csv")
                && shown.contains("line 3")
                && shown.contains("training_loss"),
            "{shown}"
        );
        let err = merge_metrics_csv(&mut curve, "x.csv", b"step,loss\n1,2\n", false)
            .expect_err("columns");
        assert!(err.to_string().contains("step_number"), "{err}");
    }
}
