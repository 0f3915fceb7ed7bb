//! Analyze, AnalyzeStream and Compute through a real tonic client.

use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_proto::engine::v1::*;
use tonic::Code;

use super::start;

#[tokio::test]
async fn analyze_unary_and_streamed_agree_with_a_reference() {
    let (server, _dir) = start().await;
    let mut client = EngineClient::new(server.channel().await);
    let values: Vec<f64> = (1..=1000).map(f64::from).collect();
    let request = AnalyzeRequest {
        values: values.clone(),
        quantiles: vec![0.0, 0.5, 0.99, 1.0],
        approx_quantiles: vec![0.5, 0.99],
        histogram: Some(HistogramSpec {
            edges: vec![0.0, 500.0, 1000.0],
            bins: 0,
        }),
        non_finite: NonFinitePolicy::Unspecified as i32,
    };
    let unary = client.analyze(request.clone()).await.unwrap().into_inner();
    assert_eq!(unary.count, 1000);
    assert_eq!(unary.sum, 500_500.0);
    assert_eq!(unary.mean, 500.5);
    assert!((unary.variance - 83_416.666_666_666_67).abs() < 1e-6);
    assert_eq!((unary.min, unary.max), (1.0, 1000.0));
    let exact: Vec<f64> = unary.quantiles.iter().map(|q| q.value).collect();
    assert_eq!(exact, [1.0, 500.5, 990.01, 1000.0]);
    for q in &unary.approx_quantiles {
        let truth = 1.0 + q.q * 999.0;
        assert!(
            (q.value - truth).abs() <= truth * unary.approx_relative_error + 1.0,
            "{q:?}"
        );
    }
    assert_eq!(unary.histogram.unwrap().counts, [499, 501]);

    // The same values in ten messages; options from the first.
    let mut messages = vec![AnalyzeRequest {
        values: vec![],
        ..request.clone()
    }];
    messages.extend(values.chunks(100).map(|chunk| AnalyzeRequest {
        values: chunk.to_vec(),
        ..AnalyzeRequest::default()
    }));
    let streamed = client
        .analyze_stream(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(streamed.count, 1000);
    assert_eq!(streamed.quantiles, request_quantiles(&unary.quantiles));
    server.stop().await.unwrap();
}

fn request_quantiles(quantiles: &[Quantile]) -> Vec<Quantile> {
    quantiles.to_vec()
}

#[tokio::test]
async fn analyze_refuses_bad_options_and_non_finite_values_by_policy() {
    let (server, _dir) = start().await;
    let mut client = EngineClient::new(server.channel().await);
    for (request, field) in [
        (
            AnalyzeRequest {
                values: vec![1.0],
                quantiles: vec![2.0],
                ..AnalyzeRequest::default()
            },
            "quantiles[0]",
        ),
        (
            AnalyzeRequest {
                values: vec![1.0, f64::NAN],
                non_finite: NonFinitePolicy::Reject as i32,
                ..AnalyzeRequest::default()
            },
            "values[1]",
        ),
        (
            AnalyzeRequest {
                values: vec![1.0],
                histogram: Some(HistogramSpec {
                    edges: vec![3.0, 1.0],
                    bins: 0,
                }),
                ..AnalyzeRequest::default()
            },
            "histogram.edges[1]",
        ),
        (
            AnalyzeRequest {
                non_finite: 42,
                ..AnalyzeRequest::default()
            },
            "non_finite",
        ),
    ] {
        let status = client.analyze(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains(&format!("`{field}`")),
            "{status:?}"
        );
    }
    let skipped = client
        .analyze(AnalyzeRequest {
            values: vec![1.0, f64::NAN, f64::INFINITY, 3.0],
            non_finite: NonFinitePolicy::Skip as i32,
            ..AnalyzeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (skipped.count, skipped.nan_count, skipped.infinite_count),
        (2, 1, 1)
    );
    assert_eq!(skipped.mean, 2.0);
    // Infinities are kept by the default rule; the approximate quantiles answer them
    // (an infinity once reached DDSketch and overflowed its bin arithmetic).
    let kept = client
        .analyze(AnalyzeRequest {
            values: vec![f64::NEG_INFINITY, 1.0, 2.0, 3.0, f64::INFINITY],
            approx_quantiles: vec![0.0, 0.5, 1.0],
            ..AnalyzeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let approx: Vec<f64> = kept.approx_quantiles.iter().map(|q| q.value).collect();
    assert_eq!((approx[0], approx[2]), (f64::NEG_INFINITY, f64::INFINITY));
    assert!(
        (approx[1] - 2.0).abs() <= 2.0 * kept.approx_relative_error,
        "{approx:?}"
    );
    assert_eq!((kept.min, kept.max), (f64::NEG_INFINITY, f64::INFINITY));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_stream_over_its_limit_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = core_engine::Config::for_test(dir.path());
    config.limits.max_stream_values = 1000;
    let (server, _dir) = super::start_with(config, dir).await;
    let mut client = EngineClient::new(server.channel().await);
    let messages = (0..20).map(|_| AnalyzeRequest {
        values: vec![1.0; 100],
        ..AnalyzeRequest::default()
    });
    let status = client
        .analyze_stream(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("limits.max_stream_values"),
        "{status:?}"
    );
    let status = client
        .analyze_stream(tokio_stream::iter(Vec::<AnalyzeRequest>::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await.unwrap();
}

async fn compute(
    client: &mut EngineClient<tonic::transport::Channel>,
    op: compute_request::Op,
) -> Result<compute_response::Result, tonic::Status> {
    client
        .compute(ComputeRequest { op: Some(op) })
        .await
        .map(|response| response.into_inner().result.unwrap())
}

#[tokio::test]
async fn compute_kernels_answer_and_check_shapes() {
    use compute_request::Op;
    use compute_response::Result as Out;
    let (server, _dir) = start().await;
    let mut client = EngineClient::new(server.channel().await);
    let v = |values: Vec<f64>| Some(VectorF64 { values });
    assert_eq!(
        compute(
            &mut client,
            Op::Reduce(ReduceOp {
                kind: reduce_op::Kind::Sum as i32,
                input: v(vec![1.0, 2.0, 3.5])
            })
        )
        .await
        .unwrap(),
        Out::Scalar(6.5)
    );
    assert_eq!(
        compute(
            &mut client,
            Op::Dot(DotOp {
                a: v(vec![1.0, 2.0]),
                b: v(vec![3.0, 4.0])
            })
        )
        .await
        .unwrap(),
        Out::Scalar(11.0)
    );
    assert_eq!(
        compute(
            &mut client,
            Op::SortF64(SortF64Op {
                input: v(vec![3.0, -0.0, 1.0, f64::NEG_INFINITY]),
                descending: false
            })
        )
        .await
        .unwrap(),
        Out::F64s(VectorF64 {
            values: vec![f64::NEG_INFINITY, -0.0, 1.0, 3.0]
        })
    );
    // Large enough for the parallel bucketed sort, descending: the answer is the input
    // in reverse total order, bit for bit (NaN first, then +inf, …, +0, -0, …).
    let mut many: Vec<f64> = (0..300_000_u64)
        .map(|i| ((i.wrapping_mul(2_654_435_761) % 100_003) as f64) * 0.25 - 12_500.0)
        .collect();
    many.extend([f64::NAN, f64::INFINITY, 0.0, -0.0, f64::NEG_INFINITY]);
    let mut expected = many.clone();
    expected.sort_by(|a, b| b.total_cmp(a));
    let Out::F64s(sorted) = compute(
        &mut client,
        Op::SortF64(SortF64Op {
            input: v(many),
            descending: true,
        }),
    )
    .await
    .unwrap() else {
        panic!("a sort answers with values");
    };
    assert_eq!(sorted.values.len(), expected.len());
    assert!(
        sorted
            .values
            .iter()
            .zip(&expected)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "not in descending total order"
    );
    assert_eq!(
        compute(
            &mut client,
            Op::SortI64(SortI64Op {
                input: Some(VectorI64 {
                    values: vec![3, -7, 5]
                }),
                descending: true
            })
        )
        .await
        .unwrap(),
        Out::I64s(VectorI64 {
            values: vec![5, 3, -7]
        })
    );
    let product = compute(
        &mut client,
        Op::Matmul(MatMulOp {
            a: Some(Matrix {
                rows: 2,
                cols: 3,
                values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            }),
            b: Some(Matrix {
                rows: 3,
                cols: 2,
                values: vec![7.0, 8.0, 9.0, 10.0, 11.0, 12.0],
            }),
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        product,
        Out::Matrix(Matrix {
            rows: 2,
            cols: 2,
            values: vec![58.0, 64.0, 139.0, 154.0]
        })
    );
    let Out::Digests(digests) = compute(
        &mut client,
        Op::Sha256Batch(HashBatchOp {
            inputs: vec![b"abc".to_vec(), vec![]],
        }),
    )
    .await
    .unwrap() else {
        panic!("digests");
    };
    assert_eq!(
        hex::encode(&digests.digests[0]),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let Out::Root(root) = compute(
        &mut client,
        Op::MerkleRoot(MerkleRootOp {
            leaves: vec![b"a".to_vec()],
        }),
    )
    .await
    .unwrap() else {
        panic!("root");
    };
    assert_eq!(root.len(), 32);

    for (op, field) in [
        (
            Op::Dot(DotOp {
                a: v(vec![1.0]),
                b: v(vec![1.0, 2.0]),
            }),
            "dot.b",
        ),
        (
            Op::Matmul(MatMulOp {
                a: Some(Matrix {
                    rows: 2,
                    cols: 2,
                    values: vec![1.0; 4],
                }),
                b: Some(Matrix {
                    rows: 3,
                    cols: 1,
                    values: vec![1.0; 3],
                }),
            }),
            "matmul.b.rows",
        ),
        (
            Op::Matmul(MatMulOp {
                a: Some(Matrix {
                    rows: 100_000,
                    cols: 100_000,
                    values: vec![1.0; 4],
                }),
                b: Some(Matrix {
                    rows: 1,
                    cols: 1,
                    values: vec![1.0],
                }),
            }),
            "matmul.a",
        ),
        (
            Op::Reduce(ReduceOp {
                kind: 0,
                input: None,
            }),
            "reduce.kind",
        ),
    ] {
        let status = compute(&mut client, op).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains(&format!("`{field}`")),
            "{status:?}"
        );
    }
    let status = client
        .compute(ComputeRequest { op: None })
        .await
        .unwrap_err();
    assert!(status.message().contains("`op`"));
    server.stop().await.unwrap();
}
