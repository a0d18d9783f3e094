/** The wait for a login's answer follows the target's recent answers (src/fsm/login-answer-wait.ts). */
import t from 'tap';
import {
  FULL_WAIT_EVERY,
  LOGIN_ANSWER_FACTOR,
  LOGIN_ANSWER_FLOOR_MS,
  LOGIN_ANSWERS_KEPT,
  LoginAnswerWait,
} from '../src/fsm/login-answer-wait.js';

t.test('constants', async (t) => {
  t.same([LOGIN_ANSWERS_KEPT, LOGIN_ANSWER_FACTOR, LOGIN_ANSWER_FLOOR_MS, FULL_WAIT_EVERY], [8, 3, 250, 4]);
});

t.test('no answer seen yet: the whole deadline', async (t) => {
  const w = new LoginAnswerWait();
  t.equal(w.slowestMs, undefined);
  t.equal(w.nextMs(1000), 1000);
  w.noAnswer();
  t.equal(w.nextMs(1000), 1000, 'still nothing learnt');
  w.answeredUntimed();
  t.equal(w.nextMs(1000), 1000, 'an answer of unknown speed teaches nothing');
});

t.test('3x the slowest of the last 8 answers, at least 250 ms, at most the whole deadline', async (t) => {
  const w = new LoginAnswerWait();
  w.answered(60);
  t.equal(w.nextMs(1000), 250, '3 x 60 = 180: the floor');
  w.answered(120);
  t.equal(w.nextMs(1000), 360, '3 x 120');
  w.answered(100.2);
  t.equal(w.nextMs(1000), 360, 'the slowest counts');
  w.answered(500);
  t.equal(w.nextMs(1000), 1000, '3 x 500 capped by the deadline');
  t.equal(w.nextMs(5000), 1500, 'a longer deadline: 3 x 500');
  for (let i = 0; i < LOGIN_ANSWERS_KEPT - 1; i++) w.answered(70);
  t.equal(w.slowestMs, 500, 'the 500 ms answer is still among the last 8');
  w.answered(70);
  t.equal(w.slowestMs, 70, 'pushed out by 8 faster ones');
  t.equal(w.nextMs(1000), 250);
  const odd = new LoginAnswerWait();
  odd.answered(100.1);
  t.equal(odd.nextMs(1000), 301, 'rounded up to whole ms');
});

t.test('every 4th unanswered login in a row waits the whole deadline; an answer resets the count', async (t) => {
  const w = new LoginAnswerWait();
  w.answered(50);
  const seq: number[] = [];
  for (let i = 0; i < 9; i++) {
    seq.push(w.nextMs(1000));
    w.noAnswer();
  }
  t.same(seq, [250, 250, 250, 1000, 250, 250, 250, 1000, 250]);
  w.answeredUntimed();
  t.equal(w.nextMs(1000), 250, 'a reject (answered) restarts the count');
  w.noAnswer();
  w.noAnswer();
  w.noAnswer();
  t.equal(w.nextMs(1000), 1000);
  w.answered(80);
  t.equal(w.nextMs(1000), 250, 'an answer restarts it too');
});
