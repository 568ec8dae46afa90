//! One mapping of AWS SDK errors onto the core error, for Bedrock,
//! bedrock-runtime and the Bedrock deployer of `finetune-deploy`.

use std::fmt;

use aws_sdk_bedrock::error::{ProvideErrorMetadata, SdkError};
use finetune_core::Error;

/// Maps an AWS SDK error (Bedrock, bedrock-runtime: they share the smithy
/// error types) to the core error: throttling is `RateLimited`, missing
/// resources `NotFound`, credential problems `Authentication`, server
/// errors and transport failures `Transient`, the rest `Provider` with the
/// service's error code. `what` names the operation.
pub fn aws_error<E, R>(what: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().map(str::to_owned);
            let message = e.message().unwrap_or("no message").to_owned();
            match code.as_deref() {
                Some("ThrottlingException" | "TooManyRequestsException") => {
                    Error::RateLimited { retry_after: None, message }
                }
                Some("ResourceNotFoundException") => {
                    Error::NotFound { what: format!("{what}: {message}") }
                }
                Some("AccessDeniedException") => Error::PermissionDenied { message },
                Some(
                    "UnrecognizedClientException"
                    | "ExpiredTokenException"
                    | "InvalidSignatureException"
                    | "IncompleteSignature",
                ) => Error::Authentication { message },
                Some("InternalServerException" | "ServiceUnavailableException") => {
                    Error::Transient { message: format!("{what}: {message}") }
                }
                _ => Error::Provider {
                    status: None,
                    code,
                    message: format!("{what}: {message}"),
                    param: None,
                },
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Error::Transient {
                message: format!("{what}: {}", aws_sdk_bedrock::error::DisplayErrorContext(&err)),
            }
        }
        _ => Error::Other {
            message: format!("{what}: {}", aws_sdk_bedrock::error::DisplayErrorContext(&err)),
            source: None,
        },
    }
}
