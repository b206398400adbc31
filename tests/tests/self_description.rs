//! posd describes itself: grpc.health.v1 (the API and one name per lane) and
//! server reflection, v1 and v1alpha, as grpcurl and Python clients use them.

use posd_e2e::Lane;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn channel(lane: &Lane) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", lane.posd_addr)).unwrap().connect().await.unwrap()
}

async fn health(lane: &Lane, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(channel(lane).await);
    let r = client.check(HealthCheckRequest { service: service.into() }).await?;
    Ok(r.into_inner().status())
}

#[tokio::test]
async fn health_reports_the_api_and_each_lane_by_its_reader() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    assert_eq!(health(&lane, "pos.terminal.v1.PaymentTerminal").await.unwrap(), ServingStatus::Serving);
    posd_e2e::eventually("lane-1 to be serving", async || {
        (health(&lane, "posd.lane.lane-1").await.ok()? == ServingStatus::Serving).then_some(())
    })
    .await;
    lane.kill_reader();
    posd_e2e::eventually("lane-1 to be not serving after the reader is unplugged", async || {
        (health(&lane, "posd.lane.lane-1").await.ok()? == ServingStatus::NotServing).then_some(())
    })
    .await;
    let unknown = health(&lane, "posd.lane.lane-9").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    lane.finish();
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_services_and_describe_them() {
    let lane = Lane::start(&[]);

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut v1 = ServerReflectionClient::new(channel(&lane).await);
    let ask = |m: MessageRequest| ServerReflectionRequest { host: String::new(), message_request: Some(m) };
    let mut stream = v1
        .server_reflection_info(tokio_stream::iter(vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol("pos.terminal.v1.PaymentTerminal".into())),
        ]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["pos.terminal.v1.PaymentTerminal", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors")
    };
    assert!(!files.file_descriptor_proto.is_empty());

    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let mut alpha = AlphaClient::new(channel(&lane).await);
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let mut stream = alpha.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let Some(AlphaResponse::ListServicesResponse(list)) = stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    assert!(list.service.iter().any(|s| s.name == "pos.terminal.v1.PaymentTerminal"));
    lane.finish();
}
