//! `unitable serve` as a client sees it: the gRPC surface (health, reflection, admin,
//! UNIMPLEMENTED roles), the HTTP endpoints, durability of tables across a crash, and a clean
//! exit on SIGTERM.

use anyhow::Result;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{GetTableRequest, ReadRequest, WriteRequest};
use unitable_tests::Service;

async fn list_services(url: String) -> Result<Vec<String>> {
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect()
        .await?;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let Some(response) = responses.message().await? else {
        anyhow::bail!("reflection returned nothing");
    };
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => anyhow::bail!("unexpected reflection response {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_surface_health_reflection_and_pending_roles() -> Result<()> {
    let service = tokio::task::spawn_blocking(|| Service::start(&[])).await??;
    let url = service.grpc_url();

    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect()
        .await?;
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: "unitable.v1.TableAdminService".into(),
        })
        .await?
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let services = list_services(url.clone()).await?;
    for expected in [
        "unitable.v1.TableAdminService",
        "unitable.v1.WriteService",
        "unitable.v1.ReadService",
        "unitable.v1.CompactionService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} missing from {services:?}"
        );
    }

    let err = WriteServiceClient::connect(url.clone())
        .await?
        .write(WriteRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("table"), "{}", err.message());
    let err = ReadServiceClient::connect(url.clone())
        .await?
        .read(ReadRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("table"), "{}", err.message());

    let mut admin = TableAdminServiceClient::connect(url).await?;
    let err = admin
        .get_table(GetTableRequest { table: "".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = admin
        .get_table(GetTableRequest {
            table: "a.missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    Ok(())
}

#[test]
fn tables_survive_a_crash_and_sigterm_exits_cleanly() -> Result<()> {
    let mut service = Service::start(&[])?;
    service
        .cli(&[
            "table",
            "create",
            "ops.events",
            "--column",
            "id:string!",
            "--column",
            "at:timestamp",
            "--primary-key",
            "id",
            "--buckets",
            "2",
        ])?
        .ok()?;
    let metrics = service.http_get("/metrics")?.text();
    assert!(
        metrics.contains(r#"unitable_grpc_requests_total{method="CreateTable"} 1"#),
        "{metrics}"
    );

    service.kill()?;
    service.restart()?;
    let described = service
        .cli(&["table", "describe", "ops.events", "--format", "json"])?
        .ok()?;
    let json: serde_json::Value = serde_json::from_str(&described)?;
    assert_eq!(json["buckets"], 2);
    assert_eq!(json["primary_key"], serde_json::json!(["id"]));
    assert_eq!(json["changelog"]["topic"], "unitable.ops.events");

    let topic = service
        .data_dir()
        .join("changelog/unitable.ops.events/topic.json");
    assert!(
        topic.exists(),
        "the local changelog topic is missing after a restart"
    );
    service.cli(&["table", "drop", "ops.events"])?.ok()?;
    assert!(!topic.exists(), "drop must remove the topic");

    let status = service.stop()?;
    assert!(status.success(), "SIGTERM should exit 0, got {status}");
    assert!(
        service.log().contains("shutdown complete"),
        "{}",
        service.log()
    );
    Ok(())
}

#[test]
fn a_taken_port_fails_start_up_with_advice() -> Result<()> {
    let service = Service::start(&[])?;
    let taken = service.grpc_addr().to_string();
    let output = std::process::Command::new(unitable_tests::unitable_bin()?)
        .args(["serve", "--grpc-addr", &taken, "--http-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(service.data_dir().join("second"))
        .output()?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--grpc-addr"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_with_kafka_creates_table_topics_on_the_broker() -> Result<()> {
    use unitable_core::changelog::{Changelog, KafkaChangelog, KafkaConfig};
    use unitable_core::naming::TopicName;

    let kafka = tokio::task::spawn_blocking(unitable_tests::Kafka::start).await??;
    let brokers = kafka.bootstrap();
    let service = {
        let brokers = brokers.clone();
        tokio::task::spawn_blocking(move || Service::start(&["--kafka-brokers", &brokers]))
            .await??
    };
    let out = tokio::task::spawn_blocking(move || {
        let out = service.cli(&[
            "table",
            "create",
            "k.events",
            "--column",
            "id:int64!",
            "--primary-key",
            "id",
            "--buckets",
            "3",
        ]);
        (service, out)
    })
    .await?;
    out.1?.ok()?;
    // An outside client sees the topic with one partition per bucket.
    let log = KafkaChangelog::connect(KafkaConfig::new(brokers)).await?;
    assert_eq!(
        log.partition_count(&TopicName::new("unitable.k.events"))
            .await?,
        3
    );
    drop(out.0);
    Ok(())
}

#[test]
fn serve_fails_fast_when_kafka_is_unreachable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let started = std::time::Instant::now();
    let output = std::process::Command::new(unitable_tests::unitable_bin()?)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--kafka-brokers", "127.0.0.1:1"])
        .env("UNITABLE_LOG", "error")
        .output()?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--kafka-brokers"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "start-up must give up on unreachable brokers"
    );
    Ok(())
}
