//! The smol adapter against a real `redis-server` and a mock token endpoint, each test
//! under `smol::block_on`.

mod common;

use common::async_scenarios::{self as scenario, TestRuntime};
use redis_entraid::smol::Smol;

#[test]
fn multiplexed_through_renewals() {
    Smol::block_on(scenario::multiplexed_through_renewals::<Smol>());
}

#[test]
fn manager_survives_restart() {
    Smol::block_on(scenario::manager_survives_restart::<Smol>());
}

#[test]
fn stalled_subscriber_does_not_delay_renewal() {
    Smol::block_on(scenario::stalled_subscriber_does_not_delay_renewal::<Smol>());
}

#[test]
fn resp3_subscriber_keeps_receiving() {
    Smol::block_on(scenario::resp3_subscriber_keeps_receiving::<Smol>());
}

#[test]
fn first_token_wait_never_blocks_executor() {
    Smol::block_on(scenario::first_token_wait_never_blocks_executor::<Smol>());
}

#[test]
fn connection_keeps_renewal_alive() {
    Smol::block_on(scenario::connection_keeps_renewal_alive::<Smol>());
}
