// Minato playground: the queue panel. The generations running and waiting in the process that answered
// GET /queue: every key's for an admin key, its own (with its places among everyone's) for a user key.
// It looks again every 2 s, but only while the panel is on the screen and the tab is visible, and one
// look at a time (the next is planned when the last has answered), so a slow Minato gets no pile-up.
'use strict';

const QUEUE_EVERY_MS = 2000;
/** After an error that may pass by itself (a 503, Minato unreachable): look again, less often. */
const QUEUE_RETRY_MS = 10000;

const queueView = {
  seq: 0, // the number of the latest look: an older answer arriving late is dropped
  timer: null,
  onScreen: false,
  // A 401 or 403 does not pass by itself: no timed looks until the key changes or Refresh is clicked
  // (the panel coming back on the screen still looks once).
  paused: false,
  key: null, // the key of the last look: what the panel shows belongs to it
};

function queueWatched() {
  return queueView.onScreen && document.visibilityState === 'visible';
}

function nextQueueLook(delay) {
  clearTimeout(queueView.timer);
  queueView.timer = queueWatched() && !queueView.paused ? setTimeout(refreshQueue, delay) : null;
}

function queueSeconds(value) {
  return `${value.toFixed(1)} s`;
}

function clearQueue() {
  $('#queue-summary').textContent = '';
  $('#queue-running tbody').replaceChildren();
  $('#queue-waiting tbody').replaceChildren();
}

function showQueue(report) {
  const { running, waiting } = report.totals;
  const slots = `${report.max_generations} slot${report.max_generations === 1 ? '' : 's'}`;
  $('#queue-summary').textContent = `${running} running (of ${slots}), ${waiting} waiting, in process ${report.pid}`;
  $('#queue-running tbody').replaceChildren(...report.running.map((r) => element(
    'tr', {},
    element('th', { scope: 'row', textContent: r.model }),
    cell('Key', r.key),
    cell('Backend', r.backend || 'not known yet'),
    cell('Running for', queueSeconds(r.seconds)),
  )));
  $('#queue-waiting tbody').replaceChildren(...report.waiting.map((w) => element(
    'tr', {},
    element('th', { scope: 'row', textContent: w.model }),
    cell('Key', w.key),
    cell('Position', String(w.position)),
    cell('Waiting for', queueSeconds(w.seconds)),
  )));
}

async function refreshQueue() {
  clearTimeout(queueView.timer);
  queueView.timer = null;
  const seq = ++queueView.seq;
  const key = state.key;
  let delay = QUEUE_EVERY_MS;
  try {
    const report = await apiJson('GET', '/queue');
    if (seq !== queueView.seq) return;
    queueView.key = key;
    showQueue(report);
    queueView.paused = false;
    showError('#queue-error', null);
  } catch (error) {
    if (seq !== queueView.seq) return;
    queueView.key = key;
    clearQueue();
    showError('#queue-error', error);
    queueView.paused = error instanceof ApiError && (error.status === 401 || error.status === 403);
    delay = QUEUE_RETRY_MS;
  }
  nextQueueLook(delay);
}

// The key changed, or an answer ended: look now if the panel is watched. What another key was shown
// (rows or an error) goes at once, even while the panel is off the screen.
document.addEventListener('minato:refresh', () => {
  queueView.paused = false;
  if (queueView.key !== state.key) {
    queueView.seq += 1; // a look still under way was the other key's
    queueView.key = state.key;
    clearQueue();
    showError('#queue-error', null);
  }
  if (queueWatched()) refreshQueue();
});
document.addEventListener('visibilitychange', () => (queueWatched() ? refreshQueue() : nextQueueLook(0)));
new IntersectionObserver((entries) => {
  queueView.onScreen = entries[entries.length - 1].isIntersecting;
  if (queueWatched()) refreshQueue();
  else nextQueueLook(0);
}).observe($('#queue'));
$('#refresh-queue').addEventListener('click', () => {
  queueView.paused = false;
  refreshQueue();
});
