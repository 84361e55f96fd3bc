//! Compiles the MQ `.proto` files with protox, so no system `protoc` is needed.

fn main() {
    let protos = ["proto/mq.proto", "proto/pcast.proto", "proto/chat.proto"];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"]).expect("MQ .proto files compile");
    prost_build::Config::new().compile_fds(fds).expect("prost generates the MQ wire types");
}
