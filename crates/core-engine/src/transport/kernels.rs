//! Analyze, AnalyzeStream and Compute: proto ⇄ the `analyze` and `compute` modules, run
//! on the compute pool.

use std::time::Instant;

use omnimesh_proto::engine::v1 as pb;
use tokio_stream::StreamExt as _;

use crate::analyze::{self, NonFinite};
use crate::compute::{self, ComputePool};
use crate::error::EngineError;

fn policy(value: i32) -> Result<NonFinite, EngineError> {
    match pb::NonFinitePolicy::try_from(value) {
        Ok(pb::NonFinitePolicy::Unspecified) => Ok(NonFinite::DropNan),
        Ok(pb::NonFinitePolicy::Reject) => Ok(NonFinite::Reject),
        Ok(pb::NonFinitePolicy::Skip) => Ok(NonFinite::Skip),
        Err(_) => Err(EngineError::invalid(
            "non_finite",
            format!("unknown policy {value}"),
        )),
    }
}

fn options(request: &pb::AnalyzeRequest) -> Result<(NonFinite, analyze::Request), EngineError> {
    let spec = request.histogram.clone();
    let options = analyze::Request {
        quantiles: request.quantiles.clone(),
        approx_quantiles: request.approx_quantiles.clone(),
        histogram: spec.is_some(),
        edges: spec.as_ref().map(|s| s.edges.clone()).unwrap_or_default(),
        bins: spec.as_ref().map_or(0, |s| s.bins),
    };
    analyze::validate(&options)?;
    Ok((policy(request.non_finite)?, options))
}

fn response(report: analyze::Report, request: &analyze::Request) -> pb::AnalyzeResponse {
    let m = report.moments;
    let empty = m.count == 0;
    let quantiles = |qs: &[f64], values: &[f64]| {
        qs.iter()
            .zip(values)
            .map(|(q, value)| pb::Quantile {
                q: *q,
                value: *value,
            })
            .collect()
    };
    pb::AnalyzeResponse {
        count: m.count,
        sum: m.sum,
        mean: if empty { f64::NAN } else { m.mean },
        variance: m.variance(),
        stddev: m.variance().sqrt(),
        min: if empty { f64::NAN } else { m.min },
        max: if empty { f64::NAN } else { m.max },
        quantiles: quantiles(&request.quantiles, &report.quantiles),
        approx_quantiles: quantiles(&request.approx_quantiles, &report.approx_quantiles),
        approx_relative_error: if request.approx_quantiles.is_empty() {
            0.0
        } else {
            analyze::SKETCH_RELATIVE_ERROR
        },
        histogram: request.histogram.then(|| pb::Histogram {
            edges: report.edges.clone(),
            counts: report.counts.clone(),
        }),
        nan_count: report.nan_count,
        infinite_count: report.infinite_count,
    }
}

pub(super) async fn analyze(
    pool: &ComputePool,
    request: pb::AnalyzeRequest,
) -> Result<pb::AnalyzeResponse, EngineError> {
    let (policy, options) = options(&request)?;
    let values = request.values;
    pool.run(move || {
        analyze::analyze(values, policy, &options).map(|report| response(report, &options))
    })
    .await?
}

pub(super) async fn analyze_stream(
    pool: &ComputePool,
    max_values: usize,
    mut stream: tonic::Streaming<pb::AnalyzeRequest>,
) -> Result<pb::AnalyzeResponse, tonic::Status> {
    let Some(first) = stream.next().await.transpose()? else {
        return Err(EngineError::invalid("values", "the stream sent no message").into());
    };
    let (policy, options) = options(&first)?;
    let mut values = first.values;
    while let Some(message) = stream.next().await.transpose()? {
        if values.len() + message.values.len() > max_values {
            return Err(EngineError::ResourceExhausted {
                limit: "limits.max_stream_values",
                max: max_values as u64,
                got: (values.len() + message.values.len()) as u64,
            }
            .into());
        }
        values.extend_from_slice(&message.values);
    }
    if values.len() > max_values {
        return Err(EngineError::ResourceExhausted {
            limit: "limits.max_stream_values",
            max: max_values as u64,
            got: values.len() as u64,
        }
        .into());
    }
    Ok(pool
        .run(move || {
            analyze::analyze(values, policy, &options).map(|report| response(report, &options))
        })
        .await??)
}

fn f64s(values: Vec<f64>) -> pb::compute_response::Result {
    pb::compute_response::Result::F64s(pb::VectorF64 { values })
}

pub(super) async fn compute(
    pool: &ComputePool,
    request: pb::ComputeRequest,
) -> Result<pb::ComputeResponse, EngineError> {
    use pb::compute_request::Op;
    use pb::compute_response::Result as Out;
    let op = request
        .op
        .ok_or_else(|| EngineError::invalid("op", "one operation is required"))?;
    let threads = pool.threads();
    let (result, kernel_nanos) = pool
        .run(move || {
            let started = Instant::now();
            let result = match op {
                Op::Reduce(reduce) => {
                    let values = reduce.input.unwrap_or_default().values;
                    match pb::reduce_op::Kind::try_from(reduce.kind) {
                        Ok(pb::reduce_op::Kind::Sum) => Ok(Out::Scalar(compute::sum(&values))),
                        Ok(pb::reduce_op::Kind::Min) => Ok(Out::Scalar(compute::min(&values))),
                        Ok(pb::reduce_op::Kind::Max) => Ok(Out::Scalar(compute::max(&values))),
                        _ => Err(EngineError::invalid("reduce.kind", "one of SUM, MIN, MAX")),
                    }
                }
                Op::Dot(dot) => compute::dot(
                    &dot.a.unwrap_or_default().values,
                    &dot.b.unwrap_or_default().values,
                )
                .map(Out::Scalar),
                Op::SortF64(sort) => {
                    let values = sort.input.unwrap_or_default().values;
                    Ok(f64s(compute::sorted_f64(&values, sort.descending)))
                }
                Op::SortI64(sort) => {
                    let mut values = sort.input.unwrap_or_default().values;
                    compute::sort_i64(&mut values, sort.descending);
                    Ok(Out::I64s(pb::VectorI64 { values }))
                }
                Op::Matmul(matmul) => {
                    let (a, b) = (matmul.a.unwrap_or_default(), matmul.b.unwrap_or_default());
                    compute::matmul(
                        &a.values,
                        (a.rows as usize, a.cols as usize),
                        &b.values,
                        (b.rows as usize, b.cols as usize),
                        threads,
                    )
                    .map(|values| {
                        Out::Matrix(pb::Matrix {
                            rows: a.rows,
                            cols: b.cols,
                            values,
                        })
                    })
                }
                Op::Sha256Batch(batch) => Ok(Out::Digests(pb::HashBatchResult {
                    digests: compute::sha256_batch(&batch.inputs),
                })),
                Op::MerkleRoot(tree) => Ok(Out::Root(compute::merkle_root(&tree.leaves))),
            };
            (result, started.elapsed().as_nanos())
        })
        .await?;
    Ok(pb::ComputeResponse {
        result: Some(result?),
        kernel_nanos: u64::try_from(kernel_nanos).unwrap_or(u64::MAX),
    })
}
