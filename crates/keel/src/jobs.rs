//! Every task kind Keel runs, in one table: the queue engine knows none of
//! them, and anything not listed here is dead-lettered. Each entry hands
//! its area's handler what it needs from the application.

use std::sync::Arc;

use crate::app::App;
use crate::tasks::TaskKind;
use crate::webhooks::sms::{self, Answering, Sending};
use crate::webhooks::{processing, reconcile};

pub const KINDS: &[TaskKind<Arc<App>>] = &[
    TaskKind {
        name: "webhook.process",
        run: |app, task| {
            Box::pin(async move {
                processing::process_delivery(&app.db, &app.config, &app.knowledge, task).await
            })
        },
    },
    TaskKind {
        name: "webhook.reconcile",
        run: |app, task| {
            Box::pin(async move { reconcile::reconcile(&app.db, &app.config, task).await })
        },
    },
    TaskKind {
        name: sms::TASK_KIND,
        run: |app, task| {
            Box::pin(async move {
                let sending = Sending {
                    answering: Answering {
                        db: &app.db,
                        knowledge: &app.knowledge,
                        answers: &app.answers,
                        rate_limits: &app.config.rate_limits,
                    },
                    config: &app.config,
                    http: &app.http,
                };
                sms::reply(&sending, task).await
            })
        },
    },
];
