// Minato playground: the usage panel. What the key in use generated over the last 24 h (GET /usage):
// its requests and tokens by model, its quota as a bar, its rate and its generations; for an admin key,
// every key's (GET /usage/keys). It uses app.js's helpers and refreshes when app.js says the key changed
// or an answer ended (the "minato:refresh" event).
'use strict';

function tokensText(tokens) {
  return `${tokens.total} tokens (${tokens.prompt} prompt, ${tokens.completion} completion)`;
}

function showMine(usage) {
  $('#usage-summary').textContent = `${usage.key} (${usage.role}): ${usage.requests} requests, ${tokensText(usage.tokens)}`;
  const quota = usage.quota;
  $('#usage-quota').hidden = !quota;
  if (quota) {
    const used = quota.tokens_per_day - quota.remaining;
    const bar = $('#usage-quota-bar');
    bar.max = quota.tokens_per_day;
    bar.value = used;
    bar.classList.toggle('spent', quota.remaining === 0);
    const resets = quota.resets_in_seconds ? `, all back in ${duration(quota.resets_in_seconds)}` : '';
    $('#usage-quota-text').textContent = `${used} of ${quota.tokens_per_day} used, ${quota.remaining} left${resets}`;
  }
  const limits = [];
  if (usage.rate) limits.push(`${usage.rate.remaining} of ${usage.rate.requests_per_minute} requests a minute left`);
  const c = usage.concurrency;
  limits.push(`${c.running} running${c.max ? ` of ${c.max} at once` : ''}, ${c.waiting} waiting`);
  $('#usage-limits').textContent = limits.join('; ');
  const rows = Object.entries(usage.by_model).map(([model, used]) => element(
    'tr', {},
    element('th', { scope: 'row', textContent: model }),
    cell('Requests', String(used.requests)),
    cell('Prompt tokens', String(used.tokens.prompt)),
    cell('Completion tokens', String(used.tokens.completion)),
    cell('Total', String(used.tokens.total)),
  ));
  $('#usage-models tbody').replaceChildren(...rows);
}

function showEveryKey(keys) {
  const rows = keys.map((usage) => element(
    'tr', {},
    element('th', { scope: 'row', textContent: usage.key }),
    cell('Role', usage.role),
    cell('Requests', String(usage.requests)),
    cell('Tokens', tokensText(usage.tokens)),
    cell('Quota left', usage.quota ? `${usage.quota.remaining} of ${usage.quota.tokens_per_day}` : 'no quota'),
    cell('Running', String(usage.concurrency.running)),
  ));
  $('#usage-keys tbody').replaceChildren(...rows);
}

async function refreshUsage() {
  try {
    const mine = await apiJson('GET', '/usage');
    showMine(mine);
    const admin = mine.role === 'admin';
    $('#usage-keys-box').hidden = !admin;
    if (admin) showEveryKey((await apiJson('GET', '/usage/keys')).keys);
    showError('#usage-error', null);
  } catch (error) {
    $('#usage-summary').textContent = '';
    $('#usage-models tbody').replaceChildren();
    $('#usage-keys-box').hidden = true;
    showError('#usage-error', error);
  }
}

document.addEventListener('minato:refresh', () => refreshUsage());
$('#refresh-usage').addEventListener('click', () => refreshUsage());
refreshUsage();
