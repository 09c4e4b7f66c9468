//! Integration tests of the server over real sockets on 127.0.0.1:0, fed through the
//! embedded source's HTTP ingest endpoint.

mod attacks;
mod auth;
mod auth_backend;
mod cli;
mod direct_write;
mod drain;
mod events;
mod hooks;
mod limits;
mod mongo;
mod mongo_fixtures;
mod mongo_live;
mod mongo_sdk;
mod mongo_sim;
mod observability;
mod operations;
mod parity;
mod parse_access;
mod parse_config;
mod protocol;
mod query;
mod redis;
mod redis_tls;
mod smoke;
mod support;
