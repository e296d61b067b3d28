//! Retry timing on the tokio clock, paused: each wait is checked exactly, without sleeping.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ofe_trigger::delivery::{Failure, Outcome, retry};
use ofe_trigger::{BackoffPolicy, RetryPolicy};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Runs `retry` against scripted attempt results; returns the outcome and when (from the
/// start) each attempt began.
async fn script(
    policy: RetryPolicy,
    results: Vec<Result<(), Failure>>,
) -> (Outcome, Vec<Duration>) {
    let start = Instant::now();
    let times = Arc::new(Mutex::new(Vec::new()));
    let results = Arc::new(Mutex::new(results.into_iter()));
    let shutdown = CancellationToken::new();
    let outcome = retry(
        &policy,
        &shutdown,
        |_| {},
        |_| {
            times.lock().expect("lock").push(start.elapsed());
            let next = results.lock().expect("lock").next().unwrap_or(Ok(()));
            async move { next.map(|()| None) }
        },
    )
    .await;
    let times = times.lock().expect("lock").clone();
    (outcome, times)
}

fn status(code: u16) -> Result<(), Failure> {
    Err(Failure {
        code: Some(code),
        reason: format!("HTTP {code}"),
        retryable: ofe_trigger::sink::http::is_retryable(code),
        ..Failure::default()
    })
}

fn secs(s: &[f64]) -> Vec<Duration> {
    s.iter().map(|s| Duration::from_secs_f64(*s)).collect()
}

fn policy(backoff: BackoffPolicy, retries: u32) -> RetryPolicy {
    RetryPolicy { retries, backoff, delay: Duration::from_secs(1), ..RetryPolicy::default() }
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_doubles_each_wait() {
    let (outcome, times) =
        script(policy(BackoffPolicy::Exponential, 5), vec![status(500), status(503), status(404)])
            .await;
    assert!(matches!(outcome, Outcome::Delivered(4, None)), "{outcome:?}");
    assert_eq!(times, secs(&[0.0, 1.0, 3.0, 7.0]));
}

#[tokio::test(start_paused = true)]
async fn linear_backoff_grows_by_the_delay() {
    let (outcome, times) =
        script(policy(BackoffPolicy::Linear, 5), vec![status(500), status(408), status(409)]).await;
    assert!(matches!(outcome, Outcome::Delivered(4, None)), "{outcome:?}");
    assert_eq!(times, secs(&[0.0, 1.0, 3.0, 6.0]));
}

#[tokio::test(start_paused = true)]
async fn retries_run_out_and_client_errors_are_not_retried() {
    let (outcome, times) =
        script(policy(BackoffPolicy::Exponential, 2), vec![status(500); 5]).await;
    match outcome {
        Outcome::Failed(failure, attempts) => {
            assert_eq!((failure.code, attempts), (Some(500), 3));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(times, secs(&[0.0, 1.0, 3.0]));
    for code in [400, 401, 403, 413] {
        let (outcome, times) =
            script(policy(BackoffPolicy::Exponential, 5), vec![status(code)]).await;
        assert!(matches!(outcome, Outcome::Failed(_, 1)), "{code}: {outcome:?}");
        assert_eq!(times.len(), 1, "{code} is not retried");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_of_a_429_is_honoured_up_to_retry_after_max() {
    let throttled = |after: u64| {
        Err(Failure {
            code: Some(429),
            reason: "HTTP 429".into(),
            retryable: true,
            retry_after: Some(Duration::from_secs(after)),
            ..Failure::default()
        })
    };
    let base = RetryPolicy { delay: Duration::from_millis(100), ..RetryPolicy::default() };
    // The destination asks for 10 s: the retry waits 10 s, not the 100 ms backoff.
    let (_, times) = script(base, vec![throttled(10)]).await;
    assert_eq!(times, secs(&[0.0, 10.0]));
    // It may not hold a subscriber longer than retryAfterMax.
    let capped = RetryPolicy { retry_after_max: Duration::from_secs(3), ..base };
    let (_, times) = script(capped, vec![throttled(600)]).await;
    assert_eq!(times, secs(&[0.0, 3.0]));
    // A Retry-After shorter than the backoff does not shorten it.
    let slow = RetryPolicy { delay: Duration::from_secs(5), ..base };
    let (_, times) = script(slow, vec![throttled(1)]).await;
    assert_eq!(times, secs(&[0.0, 5.0]));
    // retryAfterMax zero ignores the header.
    let ignoring = RetryPolicy { retry_after_max: Duration::ZERO, ..base };
    let (_, times) = script(ignoring, vec![throttled(10)]).await;
    assert_eq!(times, secs(&[0.0, 0.1]));
}

#[tokio::test(start_paused = true)]
async fn shutdown_interrupts_a_wait() {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.cancel();
    });
    let start = Instant::now();
    let policy = RetryPolicy { delay: Duration::from_secs(60), ..RetryPolicy::default() };
    let outcome = retry(&policy, &shutdown, |_| {}, |_| async { status(500).map(|()| None) }).await;
    assert!(matches!(outcome, Outcome::Interrupted), "{outcome:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}
