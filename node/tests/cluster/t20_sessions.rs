//! Charging sessions: reserve on two rating groups, updates reporting usage
//! and asking for more in one report, terminate; exact charges.
use crate::support::*;
use charging_client::proto::{ResultCode, Units, UpdateResponse};

fn grant_of(r: &UpdateResponse, rg: u32) -> &charging_client::proto::Grant {
    r.grants
        .iter()
        .find(|g| g.rating_group == rg)
        .unwrap_or_else(|| panic!("grant for RG {rg} in {r:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_on_two_rating_groups() {
    let env = start().await;
    let c = &env.client;
    set_standard_tariffs(c).await;
    let a = "sess-1";
    let s = "chf-sess-1";
    create(c, a, 10_000).await;

    // CCR-I: 5 MB of data (50 held), 300 s of voice (5 min: 15 held).
    let r = c.reserve(a, s, 1, RG_DATA, bytes(5 * MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve data");
    assert_eq!((r.granted, r.final_units), (Some(bytes(5 * MB)), false));
    let data = r.reservation_id;
    let r = c.reserve(a, s, 2, RG_VOICE, secs(300)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve voice");
    assert_eq!((r.granted, r.final_units), (Some(secs(300)), false));
    let voice = r.reservation_id;
    assert_ne!(data, voice);
    let b = balance(c, a).await;
    assert_money(&b, 10_000, 65);
    assert_eq!((b.open_sessions, b.open_reservations), (1, 2));

    // CCR-U 1: used 1.5 MB (2 MB rounded: 20) and 90 s (2 min: 6); the same
    // again requested. Holds are priced on cumulative usage: data
    // price(6.5 MB) − 20 = 50, voice price(390 s) − 6 = 15.
    let r = c
        .update(
            a,
            s,
            3,
            vec![
                report(RG_DATA, bytes(1_500 * KB), bytes(5 * MB)),
                report(RG_VOICE, secs(90), secs(300)),
            ],
        )
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "update 1");
    assert_eq!((r.charged, r.debt), (26, 0));
    assert_eq!(r.grants.len(), 2);
    let g = grant_of(&r, RG_DATA);
    assert_rc(g.result, ResultCode::Ok, "data grant");
    assert_eq!(
        (g.reservation_id, g.granted, g.final_units),
        (data, Some(bytes(5 * MB)), false)
    );
    let g = grant_of(&r, RG_VOICE);
    assert_rc(g.result, ResultCode::Ok, "voice grant");
    assert_eq!(
        (g.reservation_id, g.granted, g.final_units),
        (voice, Some(secs(300)), false)
    );
    assert_money(&balance(c, a).await, 9_974, 65);

    // CCR-U 2: cumulative 4.1 MB (5 MB: 50, 30 more) and 290 s (5 min: 15,
    // 9 more).
    let r = c
        .update(
            a,
            s,
            4,
            vec![
                report(RG_DATA, bytes(2_600 * KB), bytes(5 * MB)),
                report(RG_VOICE, secs(200), secs(300)),
            ],
        )
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "update 2");
    assert_eq!((r.charged, r.debt), (39, 0));
    assert_eq!(grant_of(&r, RG_DATA).granted, Some(bytes(5 * MB)));
    assert_eq!(grant_of(&r, RG_VOICE).granted, Some(secs(300)));
    assert_money(&balance(c, a).await, 9_935, 65);

    // CCR-T: cumulative 5_100_001 bytes (6 MB: 60, 10 more) and 321 s
    // (6 min: 18, 3 more). Everything held is released.
    let r = c
        .terminate(
            a,
            s,
            5,
            vec![
                report(RG_DATA, bytes(1_000_001), Units::default()),
                report(RG_VOICE, secs(31), Units::default()),
            ],
        )
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "terminate");
    assert_eq!((r.charged, r.debt), (13, 0));
    // Whole session: 26 + 39 + 13 = 78 = price(5_100_001 B) + price(321 s).
    let b = balance(c, a).await;
    assert_money(&b, 10_000 - 78, 0);
    assert_eq!((b.open_sessions, b.open_reservations, b.debt), (0, 0, 0));
    assert_eq!(b.version, 6);

    // A terminated session takes nothing more.
    let r = c
        .update(a, s, 6, vec![report(RG_DATA, bytes(1), bytes(1))])
        .await
        .unwrap();
    assert_rc(
        r.result,
        ResultCode::SessionNotFound,
        "update after terminate",
    );
    let r = c.reserve(a, s, 7, RG_DATA, bytes(1)).await.unwrap();
    assert_rc(
        r.result,
        ResultCode::SessionNotFound,
        "reserve after terminate",
    );
    let r = c.commit(a, data, bytes(1), true).await.unwrap();
    assert_rc(
        r.result,
        ResultCode::ReservationAlreadyResolved,
        "commit after terminate",
    );
    assert_eq!(balance(c, a).await, b);

    // A second session: an update asking nothing more on RG 32 resolves its
    // reservation; a rating group without a tariff fails alone.
    let s2 = "chf-sess-2";
    let r = c.reserve(a, s2, 1, RG_DATA, bytes(2 * MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve s2");
    let r = c
        .update(
            a,
            s2,
            2,
            vec![
                report(RG_DATA, bytes(MB), Units::default()),
                report(RG_UNPRICED, Units::default(), bytes(MB)),
            ],
        )
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "update s2");
    assert_eq!((r.charged, r.debt), (10, 0));
    assert_eq!(r.grants.len(), 1);
    assert_rc(
        grant_of(&r, RG_UNPRICED).result,
        ResultCode::RatingFailed,
        "unpriced grant",
    );
    let b = balance(c, a).await;
    assert_money(&b, 10_000 - 88, 0);
    assert_eq!((b.open_sessions, b.open_reservations), (1, 0));
    let r = c.terminate(a, s2, 3, vec![]).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "terminate s2");
    assert_eq!((r.charged, r.debt), (0, 0));
    let b = balance(c, a).await;
    assert_money(&b, 10_000 - 88, 0);
    assert_eq!((b.open_sessions, b.open_reservations), (0, 0));
    env.shutdown().await;
}
