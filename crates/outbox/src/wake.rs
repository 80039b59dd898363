//! In-process wake-up: a relay sleeping in this process is told when [`enqueue`](crate::enqueue)
//! wrote a row. The row is not committed yet at that moment, so a woken relay that finds
//! nothing looks again shortly (see `Relay::run`).

use std::sync::LazyLock;

use tokio::sync::Notify;

static ENQUEUED: LazyLock<Notify> = LazyLock::new(Notify::new);

pub(crate) fn enqueued() {
    ENQUEUED.notify_waiters();
}

pub(crate) fn notified() -> tokio::sync::futures::Notified<'static> {
    ENQUEUED.notified()
}
