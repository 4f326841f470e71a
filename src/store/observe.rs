//! Counts every S3 HTTP attempt for `/metrics`: operation, status and time to the response
//! headers, and the SDK's retries. An interceptor sees each attempt, retries included, which
//! the `ObjectStore` calls above the SDK cannot.

use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

use crate::metrics::{S3, S3Metrics};

#[derive(Debug)]
pub struct MetricsInterceptor;

/// When the current attempt was handed to the HTTP client (after signing and any wait for
/// credentials), kept in the operation's config bag until the attempt is recorded.
#[derive(Debug, Clone, Copy)]
struct AttemptStart(Option<Instant>);

impl Storable for AttemptStart {
    type Storer = StoreReplace<Self>;
}

fn op_index(cfg: &ConfigBag) -> usize {
    S3Metrics::op_index(cfg.load::<Metadata>().map_or("", |m| m.name()))
}

/// Records an attempt that was sent but never reached `read_after_attempt`: the SDK's attempt
/// timeout cancels the attempt together with that hook, so a timed-out attempt is only
/// seen when the next attempt starts or the operation ends.
fn record_unfinished(cfg: &mut ConfigBag) {
    if let Some(AttemptStart(Some(t))) = cfg.load::<AttemptStart>().copied() {
        S3.record_attempt(op_index(cfg), None, t.elapsed());
        cfg.interceptor_state().store_put(AttemptStart(None));
    }
}

impl Intercept for MetricsInterceptor {
    fn name(&self) -> &'static str {
        "s3-oidc-mount metrics"
    }

    fn read_before_attempt(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if cfg
            .load::<RequestAttempts>()
            .is_some_and(|a| a.attempts() > 1)
        {
            S3.retries[op_index(cfg)].inc();
        }
        record_unfinished(cfg);
        Ok(())
    }

    fn read_before_transmit(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(AttemptStart(Some(Instant::now())));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        ctx: &FinalizerInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // An attempt that failed before it was sent (no credentials, say) has no start.
        let elapsed = cfg
            .load::<AttemptStart>()
            .and_then(|s| s.0)
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let status = ctx.response().map(|r| r.status().as_u16());
        S3.record_attempt(op_index(cfg), status, elapsed);
        cfg.interceptor_state().store_put(AttemptStart(None));
        Ok(())
    }

    fn read_after_execution(
        &self,
        _ctx: &FinalizerInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        record_unfinished(cfg);
        Ok(())
    }
}
