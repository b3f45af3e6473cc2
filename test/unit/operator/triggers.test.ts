import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Caches } from '../../../operator/controllers/context.js';
import type { InformerHandlers } from '../../../operator/runtime/informer.js';
import type { KubeObject } from '../../../operator/runtime/kube.js';
import { SecretIndex, ownerKey, routeEvents } from '../../../operator/triggers.js';
import { serviceAccountReadKey } from '../../../operator/controllers/credentials/service-accounts.js';

test('the Secret index maps a Secret to every relay that reads it and forgets dropped references', () => {
  const idx = new SecretIndex();
  idx.set('ns/a', new Set(['ns/shared', 'ns/a-only']));
  idx.set('ns/b', new Set(['ns/shared']));
  assert.deepEqual(idx.relaysFor('ns/shared').sort(), ['ns/a', 'ns/b']);
  idx.set('ns/a', new Set(['ns/other']));
  assert.deepEqual(idx.relaysFor('ns/shared'), ['ns/b']);
  assert.deepEqual(idx.relaysFor('ns/a-only'), []);
  idx.add('ns/a', new Set(['ns/more']));
  assert.deepEqual(idx.relaysFor('ns/other'), ['ns/a'], 'add keeps what was known');
  assert.deepEqual(idx.relaysFor('ns/more'), ['ns/a']);
  idx.set('ns/b', new Set());
  idx.set('ns/a', new Set());
  assert.equal(idx.size(), 0, 'no entries left behind for deleted relays');
});

test('a child maps to its controlling SmtpRelay; other owners do not count', () => {
  const child = (refs: object[]) => ({ metadata: { namespace: 'mail', name: 'x', ownerReferences: refs as never } });
  assert.equal(ownerKey(child([{ apiVersion: 'smtprelay.dev/v1alpha1', kind: 'SmtpRelay', name: 'outbound', uid: 'u', controller: true }])), 'mail/outbound');
  assert.equal(ownerKey(child([{ apiVersion: 'smtprelay.dev/v1alpha1', kind: 'SmtpRelay', name: 'outbound', uid: 'u' }])), undefined, 'not the controller');
  assert.equal(ownerKey(child([{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'rs', uid: 'u', controller: true }])), undefined);
  assert.equal(ownerKey(child([])), undefined);
});

/** An informer that only records its handlers, so a test can play events into them. */
function fakeInformer() {
  const handlers: InformerHandlers<KubeObject>[] = [];
  return { handlers, on: (h: InformerHandlers<KubeObject>) => void handlers.push(h) };
}

function routed() {
  const relays = fakeInformer();
  const deployments = fakeInformer();
  const secretMeta = fakeInformer();
  const serviceAccountMeta = fakeInformer();
  const caches = { relays, children: new Map([['Deployment', deployments]]), secretMeta, serviceAccountMeta } as unknown as Caches;
  const index = new SecretIndex();
  const queued: string[] = [];
  routeEvents(caches, index, (key) => queued.push(key));
  return { relays: relays.handlers[0]!, deployments: deployments.handlers[0]!, secrets: secretMeta.handlers[0]!, accounts: serviceAccountMeta.handlers[0]!, index, queued };
}

const relay = (rv: string, generation: number, labels?: Record<string, string>) =>
  ({ apiVersion: 'smtprelay.dev/v1alpha1', kind: 'SmtpRelay', metadata: { namespace: 'mail', name: 'outbound', resourceVersion: rv, generation, ...(labels ? { labels } : {}) } }) as KubeObject;

test("a relay's own status write does not reconcile it; a spec or label change does", () => {
  const r = routed();
  r.relays.update?.(relay('1', 1), relay('2', 1));
  assert.deepEqual(r.queued, [], 'status only: same generation');
  r.relays.update?.(relay('2', 1), relay('3', 2));
  r.relays.update?.(relay('3', 2), relay('4', 2, { team: 'a' }));
  assert.deepEqual(r.queued, ['mail/outbound', 'mail/outbound']);
});

test('a change to a child reconciles the relay that controls it', () => {
  const r = routed();
  const child = (rv: string, ready: number) =>
    ({
      kind: 'Deployment',
      metadata: { namespace: 'mail', name: 'outbound', resourceVersion: rv, ownerReferences: [{ apiVersion: 'smtprelay.dev/v1alpha1', kind: 'SmtpRelay', name: 'outbound', uid: 'u', controller: true }] },
      status: { readyReplicas: ready },
    }) as KubeObject;
  r.deployments.update?.(child('1', 0), child('2', 0));
  assert.deepEqual(r.queued, [], 'nothing kept in the cache changed');
  r.deployments.update?.(child('2', 0), child('3', 1));
  r.deployments.delete?.(child('3', 1));
  assert.deepEqual(r.queued, ['mail/outbound', 'mail/outbound']);
});

test('a changed Secret reconciles every relay that read it, and no other', () => {
  const r = routed();
  r.index.set('mail/a', new Set(['mail/shared']));
  r.index.set('mail/b', new Set(['mail/shared', 'mail/b-only']));
  const secret = (name: string, rv: string) => ({ kind: 'Secret', metadata: { namespace: 'mail', name, resourceVersion: rv } }) as KubeObject;
  r.secrets.update?.(secret('shared', '1'), secret('shared', '2'));
  assert.deepEqual(r.queued.sort(), ['mail/a', 'mail/b']);
  r.queued.length = 0;
  r.secrets.update?.(secret('b-only', '2'), secret('b-only', '2'));
  assert.deepEqual(r.queued, [], 'same resourceVersion (a resync)');
  r.secrets.add?.(secret('unrelated', '1'));
  assert.deepEqual(r.queued, []);
});

test('a ServiceAccount created or deleted reconciles the relays whose users log in as it; an update to it does not', () => {
  const r = routed();
  r.index.set('mail/a', new Set([serviceAccountReadKey('apps', 'reports'), 'apps/reports']));
  const account = (rv: string) => ({ kind: 'ServiceAccount', metadata: { namespace: 'apps', name: 'reports', uid: 'u1', resourceVersion: rv } }) as KubeObject;
  r.accounts.delete?.(account('1'));
  r.accounts.add?.(account('2'));
  assert.deepEqual(r.queued, ['mail/a', 'mail/a']);
  r.queued.length = 0;
  r.accounts.update?.(account('2'), account('3'));
  assert.deepEqual(r.queued, [], 'only existence and uid matter, and an update keeps the uid');
  r.secrets.add?.({ kind: 'Secret', metadata: { namespace: 'apps', name: 'reports', resourceVersion: '1' } } as KubeObject);
  assert.deepEqual(r.queued, ['mail/a'], 'a Secret of the same name is its own key');
});
