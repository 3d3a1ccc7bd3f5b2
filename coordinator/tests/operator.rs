//! The operator API refuses what the core cannot judge alone: a checkpoint URI whose store the
//! coordinator cannot open is refused at submit, naming the field, and nothing is accepted.

use std::time::Duration;

use holdfast_coordinator::CoordinatorConfig;
use holdfast_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_uri_of_an_unknown_store_is_refused_naming_the_field() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(holdfast_coordinator::run(
        listener,
        CoordinatorConfig::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut client = None;
    for _ in 0..100 {
        match pb::operator_service_client::OperatorServiceClient::connect(format!("http://{addr}"))
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut client = client.expect("the coordinator serves within 5 s");
    let refused = client
        .submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                command: vec!["true".into()],
                nodes: 1,
                checkpoint_uri: "ftp://x/y".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("an ftp:// checkpoint URI is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("checkpoint_uri"),
        "the refusal names the field: {}",
        refused.message()
    );
    let jobs = client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(jobs.jobs.is_empty(), "nothing was accepted: {jobs:?}");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}
