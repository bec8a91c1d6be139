//! The export of finished traces: a bounded queue the request path puts
//! sampled requests into without waiting (a full queue drops the request's
//! spans and counts them), and one thread of its own that batches them
//! and posts each batch to the collector as OTLP/HTTP protobuf
//! (`otlp`). A slow, failing or absent collector fills the queue and
//! costs spans, never a request's time; one export at a time, bounded by
//! `export_timeout`, and a failed batch is dropped and counted, not retried.

use super::otlp::{self, Resource};
use super::recorder::RequestTrace;
use crate::config::model::TracingConfig;
use crate::http_client;
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use prometheus::{IntCounter, IntCounterVec};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

/// Largest answer body read from the collector (an
/// `ExportTraceServiceResponse`, or an error's status).
const MAX_ANSWER: usize = 64 * 1024;

/// The process's trace exporter: created at start; its queue and thread
/// start with the first recorded request, so in the process that serves
/// (`--daemon` forks after start-up: a thread started before the fork
/// does not exist in the child). Reloads change its endpoint, fields and
/// batching; the queue's size is the one configured when it started.
pub struct Exporter {
    queue: OnceLock<Option<mpsc::Sender<Box<RequestTrace>>>>,
    settings: Arc<ArcSwapOption<TracingConfig>>,
    counts: Counts,
    instance: String,
}

/// The exporter's metrics.
#[derive(Clone)]
struct Counts {
    exported: IntCounter,
    dropped: IntCounterVec,
}

impl Counts {
    fn dropped(&self, reason: &str, spans: usize) {
        self.dropped
            .with_label_values(&[reason])
            .inc_by(spans as u64);
    }
}

impl Exporter {
    /// An exporter that counts in `metrics`, naming this process `instance`
    /// (`service.instance.id`); nothing runs until [`configure`](Self::configure).
    pub fn new(metrics: &Metrics, instance: &str) -> Self {
        Self {
            queue: OnceLock::new(),
            settings: Arc::new(ArcSwapOption::empty()),
            counts: Counts {
                exported: metrics.trace_spans_exported.clone(),
                dropped: metrics.trace_spans_dropped.clone(),
            },
            instance: instance.to_owned(),
        }
    }

    /// Takes a config generation's `tracing` section (`None`: requests
    /// stop being recorded — the request path reads the config — while
    /// what is queued is still sent).
    pub fn configure(&self, config: Option<&TracingConfig>) {
        if let Some(config) = config {
            self.settings.store(Some(Arc::new(config.clone())));
        }
    }

    /// The queue, started with its thread on first use; `None` when the
    /// thread could not start (logged once; spans are then dropped and
    /// counted as `not_running`).
    fn queue(&self) -> Option<&mpsc::Sender<Box<RequestTrace>>> {
        self.queue
            .get_or_init(|| {
                let size = self.settings.load().as_ref().map_or(1, |c| c.queue_size);
                let (tx, rx) = mpsc::channel(size);
                let settings = self.settings.clone();
                let counts = self.counts.clone();
                let instance = self.instance.clone();
                let spawned = std::thread::Builder::new()
                    .name("tollgate-otlp".into())
                    .spawn(move || {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build();
                        match runtime {
                            Ok(rt) => rt.block_on(run(rx, settings, counts, instance)),
                            Err(e) => log::error!("trace export: cannot start its runtime: {e}"),
                        }
                    });
                match spawned {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        log::error!("tracing: cannot start the export thread: {e}");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Queues a finished, sampled request's trace; when the queue is full
    /// (the collector is slower than the traffic) its spans are dropped
    /// and counted. Never waits.
    pub fn submit(&self, trace: Box<RequestTrace>) {
        let spans = trace.children.len() + 1;
        match self.queue() {
            Some(queue) => {
                if queue.try_send(trace).is_err() {
                    self.counts.dropped("queue_full", spans);
                }
            }
            None => self.counts.dropped("not_running", spans),
        }
    }
}

/// The export thread: batches of up to `batch_size` spans, sent when full
/// or `batch_interval` after the batch's first trace arrived.
async fn run(
    mut rx: mpsc::Receiver<Box<RequestTrace>>,
    settings: Arc<ArcSwapOption<TracingConfig>>,
    counts: Counts,
    instance: String,
) {
    // Made here, off the workers: it loads the system's CA store.
    let connector = pingora::connectors::http::Connector::new(None);
    let mut batch: Vec<Box<RequestTrace>> = Vec::new();
    let mut failing = false;
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let Some(config) = settings.load_full() else {
            continue;
        };
        let mut spans = first.children.len() + 1;
        batch.push(first);
        let deadline = tokio::time::Instant::now() + config.batch_interval;
        while spans < config.batch_size {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(trace) => {
                        spans += trace.children.len() + 1;
                        batch.push(trace);
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let outcome = export(&connector, &config, &instance, &batch).await;
        match outcome {
            Ok(()) => {
                counts.exported.inc_by(spans as u64);
                if failing {
                    log::info!("trace export to {} works again", endpoint(&config));
                    failing = false;
                }
            }
            Err(e) => {
                counts.dropped("export_failed", spans);
                if !failing {
                    log::warn!(
                        "trace export to {} failed ({e}); its spans are dropped and counted in tollgate_trace_spans_dropped_total{{reason=\"export_failed\"}} until it works again",
                        endpoint(&config)
                    );
                    failing = true;
                }
            }
        }
        batch.clear();
    }
}

/// One batch posted to the collector within `export_timeout`.
async fn export(
    connector: &pingora::connectors::http::Connector,
    config: &TracingConfig,
    instance: &str,
    batch: &[Box<RequestTrace>],
) -> Result<(), String> {
    let resource = Resource {
        service_name: &config.service_name,
        instance,
        attributes: &config.resource,
    };
    let body = otlp::export_request(&resource, batch);
    let mut headers = config.headers.clone();
    headers.push((
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    ));
    let request = http_client::Request {
        method: "POST",
        url: &config.endpoint,
        headers: &headers,
        body: Some(body.into()),
        max_answer: MAX_ANSWER,
    };
    let answer = tokio::time::timeout(config.export_timeout, http_client::send(connector, request))
        .await
        .map_err(|_| format!("no answer within {:?}", config.export_timeout))??;
    match answer.status {
        200..=299 => Ok(()),
        status => Err(format!("the collector answered {status}")),
    }
}

fn endpoint(config: &TracingConfig) -> String {
    let url = &config.endpoint;
    let scheme = if url.tls { "https" } else { "http" };
    format!("{scheme}://{}{}", url.authority, url.path)
}
