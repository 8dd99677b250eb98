//! The admission queue's unit tests: capacity and Busy, turn-taking by class, user and
//! session, fair shares, shedding, deadlines.

use super::*;

/// Session `session` of a user of its own.
fn c(session: u64) -> Client {
    Client { uid: session as u32, session }
}

fn turn(admitted: &Admitted) -> oneshot::Receiver<Result<(), WireError>> {
    let (tx, rx) = oneshot::channel();
    admitted.enqueue(Pending::Turn(tx), None);
    rx
}

#[test]
fn refuses_when_full_with_retry_hint() {
    let admission = Admission::new(2, 1);
    let a = admission.admit("m", c(1), Priority::Interactive).unwrap();
    let _b = admission.admit("m", c(1), Priority::Interactive).unwrap();
    assert_eq!(admission.depth(), 2);
    let err = admission.admit("m", c(1), Priority::Interactive).unwrap_err();
    assert_eq!(err.code, ErrorCode::Busy);
    assert_eq!(err.retry_after_ms, Some(100));
    drop(a);
    assert_eq!(admission.depth(), 1);
    assert!(admission.admit("m", c(1), Priority::Interactive).is_ok());
    assert_eq!(admission.stats().busy, 1);
}

#[test]
fn retry_hint_follows_measured_service_time() {
    let admission = Admission::new(4, 1);
    admission.record_service(Duration::from_millis(8));
    assert_eq!(admission.retry_after_ms(4), 32);
    admission.record_service(Duration::from_millis(16));
    assert_eq!(admission.retry_after_ms(1), 9);
}

#[tokio::test]
async fn slots_go_to_interactive_first_then_sessions_in_turn() {
    let admission = Admission::new(16, 1);
    let running = admission.admit("m", c(9), Priority::Interactive).unwrap();
    let mut first = turn(&running);
    assert_eq!(first.try_recv().unwrap(), Ok(()));
    // Session 1 floods with batch work, then sessions 1 and 2 queue interactive work.
    let batch: Vec<_> = (0..3).map(|_| admission.admit("m", c(1), Priority::Batch).unwrap()).collect();
    let mut batch_turns: Vec<_> = batch.iter().map(turn).collect();
    let flood: Vec<_> = (0..3).map(|_| admission.admit("m", c(1), Priority::Interactive).unwrap()).collect();
    let mut flood_turns: Vec<_> = flood.iter().map(turn).collect();
    let other = admission.admit("m", c(2), Priority::Interactive).unwrap();
    let mut other_turn = turn(&other);
    assert_eq!(admission.stats().queued, 7);

    // Order of service: flood[0], other (session 2's turn), flood[1], flood[2], batch...
    drop(running);
    assert_eq!(flood_turns[0].try_recv().unwrap(), Ok(()));
    drop(flood);
    // Dropping the first flood entry's place hands the slot on; the other queued
    // flood entries were withdrawn by their drop, so session 2 is next.
    assert_eq!(other_turn.try_recv().unwrap(), Ok(()));
    assert!(flood_turns[1].try_recv().is_err());
    drop(other);
    assert_eq!(batch_turns[0].try_recv().unwrap(), Ok(()));
    assert!(batch_turns[1].try_recv().is_err());
}

#[tokio::test]
async fn users_take_turns_before_their_sessions() {
    let admission = Admission::new(64, 1);
    let running = admission.admit("m", c(99), Priority::Interactive).unwrap();
    let _t = turn(&running);
    // User 1 opens three sessions with two requests each; user 2 has one session.
    let mut queued = Vec::new();
    for session in [11, 12, 13] {
        for _ in 0..2 {
            let admitted = admission.admit("m", Client { uid: 1, session }, Priority::Interactive).unwrap();
            let rx = turn(&admitted);
            queued.push(((1, session), admitted, rx));
        }
    }
    for _ in 0..3 {
        let admitted = admission.admit("m", Client { uid: 2, session: 21 }, Priority::Interactive).unwrap();
        let rx = turn(&admitted);
        queued.push(((2, 21), admitted, rx));
    }
    drop(running);
    let mut order = Vec::new();
    for _ in 0..6 {
        let at = queued.iter_mut().position(|(_, _, rx)| rx.try_recv().is_ok()).expect("one was served");
        let (who, admitted, _) = queued.remove(at);
        order.push(who);
        drop(admitted); // finishes: the next one in turn runs
    }
    assert_eq!(order, [(1, 11), (2, 21), (1, 12), (2, 21), (1, 13), (2, 21)]);
}

#[tokio::test]
async fn a_user_over_its_share_gives_a_queued_place_to_another_user() {
    let admission = Admission::new(4, 1);
    // User 1 fills the model: one running, three queued, all interactive.
    let flood: Vec<_> = (0..4)
        .map(|i| admission.admit("m", Client { uid: 1, session: 10 + i }, Priority::Interactive).unwrap())
        .collect();
    let mut turns: Vec<_> = flood.iter().map(turn).collect();
    assert_eq!(turns[0].try_recv().unwrap(), Ok(()));
    // User 2 is admitted: user 1's newest queued request is shed with Busy.
    let other = admission.admit("m", Client { uid: 2, session: 20 }, Priority::Interactive).unwrap();
    let shed = turns[3].try_recv().unwrap().unwrap_err();
    assert_eq!(shed.code, ErrorCode::Busy);
    assert!(shed.message.contains("holds more of the model's places"), "{shed}");
    let mut other_turn = turn(&other);
    // Now user 1 holds 3 and user 2 holds 1: a second request of user 2 sheds another.
    let other2 = admission.admit("m", Client { uid: 2, session: 20 }, Priority::Interactive).unwrap();
    assert_eq!(turns[2].try_recv().unwrap().unwrap_err().code, ErrorCode::Busy);
    // 2 and 2: even shares, so a third request of either user is refused...
    assert_eq!(
        admission.admit("m", Client { uid: 2, session: 21 }, Priority::Interactive).unwrap_err().code,
        ErrorCode::Busy
    );
    assert_eq!(
        admission.admit("m", Client { uid: 1, session: 14 }, Priority::Interactive).unwrap_err().code,
        ErrorCode::Busy
    );
    // ... while a third user, holding nothing, still gets in.
    let third = admission.admit("m", c(3), Priority::Interactive).unwrap();
    assert_eq!(admission.stats().shed, 3);
    // User 2's request is next in turn after the one running (users take turns).
    drop(flood);
    assert_eq!(other_turn.try_recv().unwrap(), Ok(()));
    drop((other2, third));
}

#[test]
fn interactive_work_sheds_the_newest_queued_batch_entry_when_full() {
    // Sessions of one user: priority alone decides (fair shares are another test).
    let one_user = |session| Client { uid: 7, session };
    let admission = Admission::new(2, 1);
    let running = admission.admit("m", one_user(1), Priority::Batch).unwrap();
    let _t = turn(&running);
    let queued = admission.admit("m", one_user(1), Priority::Batch).unwrap();
    let mut queued_turn = turn(&queued);
    // Batch work is refused when full; interactive work takes the queued batch place.
    assert_eq!(admission.admit("m", one_user(2), Priority::Batch).unwrap_err().code, ErrorCode::Busy);
    let urgent = admission.admit("m", one_user(2), Priority::Interactive).unwrap();
    let shed = queued_turn.try_recv().unwrap().unwrap_err();
    assert_eq!(shed.code, ErrorCode::Busy);
    assert!(shed.retry_after_ms.is_some());
    drop(queued);
    let mut urgent_turn = turn(&urgent);
    assert_eq!(admission.depth(), 2);
    // Nothing left to shed: the next interactive request is refused.
    assert_eq!(admission.admit("m", one_user(3), Priority::Interactive).unwrap_err().code, ErrorCode::Busy);
    drop(running);
    assert_eq!(urgent_turn.try_recv().unwrap(), Ok(()));
    assert_eq!(admission.stats().shed, 1);
}

#[tokio::test]
async fn a_queued_entry_past_its_deadline_never_runs() {
    let admission = Admission::new(4, 1);
    let running = admission.admit("m", c(1), Priority::Interactive).unwrap();
    let _t = turn(&running);
    let late = admission.admit("m", c(2), Priority::Interactive).unwrap();
    let (tx, mut rx) = oneshot::channel();
    late.enqueue(Pending::Turn(tx), Some(Instant::now()));
    let next = admission.admit("m", c(3), Priority::Interactive).unwrap();
    let mut next_turn = turn(&next);
    drop(running);
    assert_eq!(rx.try_recv().unwrap().unwrap_err().code, ErrorCode::Timeout);
    assert_eq!(next_turn.try_recv().unwrap(), Ok(()));
    // expire() after a consumer took the entry reports nothing.
    assert!(late.expire().is_none());
    assert_eq!(admission.stats().timeouts, 1);
}
