// The relay's workload: a Deployment, or a StatefulSet when spec.queue keeps the
// queue on PersistentVolumeClaims. The same hardened pod either way, a fixed mount
// layout, and a restart hash that rolls pods only for changes the relay cannot
// hot-reload.

import type { V1DeploymentSpec, V1PodTemplateSpec, V1StatefulSetSpec, V1Volume, V1VolumeMount, V1ContainerPort, V1VolumeProjection } from '@kubernetes/client-node';
import type { RelayConfig } from '../../relay/config-types.js';
import {
  ANNOTATION_RESTART_HASH,
  CONFIG_DIR,
  CONFIG_FILE,
  DKIM_DIR,
  HEALTH_PATH_LIVE,
  HEALTH_PATH_READY,
  LABEL_COMPONENT,
  METRICS_PORT,
  PORT_NAME_METRICS,
  POD_TERMINATION_GRACE_SECONDS,
  RELAY_CONTAINER_NAME,
  RELAY_GID,
  RELAY_UID,
  SPOOL_DIR,
  TLS_DIR,
  UPSTREAM_CA_DIR,
  UPSTREAM_CREDENTIALS_DIR,
  UPSTREAM_OAUTH2_DIR,
  oauth2SecretSource,
  USERS_DIR,
  BASIC_AUTH_PASSWORD_KEY,
  BASIC_AUTH_USERNAME_KEY,
  USERS_KEY,
  JWKS_KEY,
  CONFIG_KEY,
  CONTROL_TOKEN_KEY,
  INTERNAL_DIR,
  PEER_PORT,
  PEER_TOKEN_KEY,
  PORT_NAME_PEERS,
  dkimKeyFile,
  persistentQueue,
  type SmtpRelay,
} from '../api/v1alpha1.js';
import { restartRelevantConfig } from '../../relay/config.js';
import { canonicalQuantity } from './quantity.js';
import { childMetadata, childNames, dkimSecretName, selectorLabels, shortHash, sortedRecord, standardLabels, userAnnotations, type ChildMetadata } from './meta.js';

export interface DeploymentInputs {
  /** The relay image (operator flag); the same image runs `operator` and `relay`. */
  image: string;
  imagePullPolicy?: 'Always' | 'IfNotPresent' | 'Never';
  /**
   * The StatefulSet's replicas when a scale-down drain holds them above spec.replicas
   * (controllers/relay/drain.ts); absent = spec.replicas.
   */
  replicas?: number;
}

export interface Deployment {
  apiVersion: 'apps/v1';
  kind: 'Deployment';
  metadata: ChildMetadata;
  spec: V1DeploymentSpec;
}

export interface StatefulSet {
  apiVersion: 'apps/v1';
  kind: 'StatefulSet';
  metadata: ChildMetadata;
  spec: V1StatefulSetSpec;
}

export type Workload = Deployment | StatefulSet;
/** The kinds a relay's pods may run under; at most one is wanted at a time (workloadKind). */
export const WORKLOAD_KINDS = ['Deployment', 'StatefulSet'] as const;
export type WorkloadKind = (typeof WORKLOAD_KINDS)[number];

/** A StatefulSet when the queue is on PersistentVolumeClaims, else a Deployment. */
export function workloadKind(relay: SmtpRelay): WorkloadKind {
  return persistentQueue(relay.spec) ? 'StatefulSet' : 'Deployment';
}

/** Volume names (also mount names). */
export const Volume = {
  config: 'config',
  users: 'users',
  tls: 'tls',
  upstreamCredentials: 'upstream-credentials',
  upstreamCa: 'upstream-ca',
  upstreamOAuth2: 'upstream-oauth2',
  dkim: 'dkim',
  tmp: 'tmp',
  spool: 'spool',
  internal: 'internal',
} as const;

/** Readable by the relay through fsGroup, by nobody else. */
const SECRET_MODE = 0o440;
const CONFIG_MODE = 0o444;

/** Hash of what the relay cannot hot-reload in its config; the pod template carries it. */
export function restartHash(config: RelayConfig): string {
  // Only the fields relay/config.ts FIELD_EFFECTS marks 'restart' roll the pods; the rest
  // (limits, access, lockout, upstream, DKIM) the relay reloads in place, and users,
  // certificates and secret file contents never enter the hash at all.
  return shortHash({ config: restartRelevantConfig(config) });
}

function volumes(relay: SmtpRelay, config: RelayConfig): { volumes: V1Volume[]; mounts: V1VolumeMount[] } {
  const names = childNames(relay);
  const s = relay.spec;
  // No subPath anywhere: kubelet updates Secret/ConfigMap volumes in place only
  // for whole-directory mounts, and the relay's hot reload depends on that.
  const volumes: V1Volume[] = [
    { name: Volume.config, configMap: { name: names.configMap, defaultMode: CONFIG_MODE, items: [{ key: CONFIG_KEY, path: CONFIG_KEY }] } },
    {
      name: Volume.users,
      secret: {
        secretName: names.usersSecret,
        defaultMode: SECRET_MODE,
        // the issuer keys only where ServiceAccount users are: other relays' pod templates stay as they were
        items: [{ key: USERS_KEY, path: USERS_KEY }, ...(config.auth.serviceAccountTokens ? [{ key: JWKS_KEY, path: JWKS_KEY }] : [])],
      },
    },
    {
      name: Volume.tls,
      secret: {
        secretName: names.tlsSecret,
        defaultMode: SECRET_MODE,
        items: [
          { key: 'tls.crt', path: 'tls.crt' },
          { key: 'tls.key', path: 'tls.key' },
        ],
      },
    },
  ];
  // The control and peer tokens the operator generated (builders/internal.ts).
  volumes.push({
    name: Volume.internal,
    secret: {
      secretName: names.internalSecret,
      defaultMode: SECRET_MODE,
      items: [
        { key: CONTROL_TOKEN_KEY, path: CONTROL_TOKEN_KEY },
        { key: PEER_TOKEN_KEY, path: PEER_TOKEN_KEY },
      ],
    },
  });
  const mounts: V1VolumeMount[] = [
    { name: Volume.config, mountPath: CONFIG_DIR, readOnly: true },
    { name: Volume.users, mountPath: USERS_DIR, readOnly: true },
    { name: Volume.tls, mountPath: TLS_DIR, readOnly: true },
    { name: Volume.internal, mountPath: INTERNAL_DIR, readOnly: true },
  ];
  if (s.upstream.credentialsSecretRef) {
    volumes.push({
      name: Volume.upstreamCredentials,
      secret: {
        secretName: s.upstream.credentialsSecretRef.name,
        defaultMode: SECRET_MODE,
        items: [
          { key: BASIC_AUTH_USERNAME_KEY, path: BASIC_AUTH_USERNAME_KEY },
          { key: BASIC_AUTH_PASSWORD_KEY, path: BASIC_AUTH_PASSWORD_KEY },
        ],
      },
    });
    mounts.push({ name: Volume.upstreamCredentials, mountPath: UPSTREAM_CREDENTIALS_DIR, readOnly: true });
  }
  const oauth2 = s.upstream.oauth2 && oauth2SecretSource(s.upstream.oauth2);
  if (oauth2) {
    // Exactly the one key, under the file name the relay config names.
    volumes.push({
      name: Volume.upstreamOAuth2,
      secret: { secretName: oauth2.ref.name, defaultMode: SECRET_MODE, items: [{ key: oauth2.ref.key, path: oauth2.file.slice(UPSTREAM_OAUTH2_DIR.length + 1) }] },
    });
    mounts.push({ name: Volume.upstreamOAuth2, mountPath: UPSTREAM_OAUTH2_DIR, readOnly: true });
  }
  if (s.upstream.caSecretRef) {
    volumes.push({
      name: Volume.upstreamCa,
      secret: { secretName: s.upstream.caSecretRef.name, defaultMode: SECRET_MODE, items: [{ key: s.upstream.caSecretRef.key, path: 'ca.crt' }] },
    });
    mounts.push({ name: Volume.upstreamCa, mountPath: UPSTREAM_CA_DIR, readOnly: true });
  }
  // Exactly the keys the config names: an entry left out of it (key missing) is not mounted.
  const keyFiles = new Set((config.dkim ?? []).map((k) => k.keyFile));
  const dkim = s.dkim.filter((d) => keyFiles.has(dkimKeyFile(d.domain, d.selector)));
  if (dkim.length > 0) {
    const sources: V1VolumeProjection[] = dkim.map((d) => ({
      secret: {
        name: dkimSecretName(relay, d),
        items: [{ key: d.secretRef?.key ?? 'private.key', path: `${d.domain.toLowerCase()}/${d.selector}.key` }],
      },
    }));
    volumes.push({ name: Volume.dkim, projected: { defaultMode: SECRET_MODE, sources } });
    mounts.push({ name: Volume.dkim, mountPath: DKIM_DIR, readOnly: true });
  }
  // The root filesystem is read-only; Node and nodemailer may still want a scratch directory.
  volumes.push({ name: Volume.tmp, emptyDir: { sizeLimit: '64Mi' } });
  mounts.push({ name: Volume.tmp, mountPath: '/tmp' });
  if (s.queue) {
    // Persistent: the StatefulSet's volumeClaimTemplates supply the volume; ephemeral: an emptyDir here.
    if (s.queue.storage.ephemeral) volumes.push({ name: Volume.spool, emptyDir: { sizeLimit: s.queue.storage.size } });
    mounts.push({ name: Volume.spool, mountPath: SPOOL_DIR });
  }
  return { volumes, mounts };
}

function containerPorts(config: RelayConfig): V1ContainerPort[] {
  return [
    ...config.listeners.map((l) => ({ name: l.name, containerPort: l.port, protocol: 'TCP' })),
    { name: PORT_NAME_METRICS, containerPort: METRICS_PORT, protocol: 'TCP' },
    ...(config.peers ? [{ name: PORT_NAME_PEERS, containerPort: config.peers.port ?? PEER_PORT, protocol: 'TCP' }] : []),
  ];
}

/** The workload that runs the relay with `config` (built once per reconcile by buildRelayConfig): workloadKind decides which. */
export function buildWorkload(relay: SmtpRelay, config: RelayConfig, inputs: DeploymentInputs): Workload {
  return workloadKind(relay) === 'StatefulSet' ? buildStatefulSet(relay, config, inputs) : buildDeployment(relay, config, inputs);
}

/** The Deployment that runs the relay with `config` (inline mode, or a queue on an emptyDir). */
export function buildDeployment(relay: SmtpRelay, config: RelayConfig, inputs: DeploymentInputs): Deployment {
  const spec: V1DeploymentSpec = {
    replicas: relay.spec.replicas,
    revisionHistoryLimit: 5,
    selector: { matchLabels: selectorLabels(relay) },
    // Never below the desired count during a rollout: a new pod must be ready before an old one drains.
    strategy: { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } },
    template: podTemplate(relay, config, inputs, 'pod-template-hash'),
  };
  return { apiVersion: 'apps/v1', kind: 'Deployment', metadata: childMetadata(relay, childNames(relay).deployment), spec };
}

/** Name of the queue's volumeClaimTemplate; each pod's claim is "spool-<relay>-<ordinal>". */
export const SPOOL_CLAIM_TEMPLATE = Volume.spool;

/**
 * The StatefulSet that runs the relay with its queue on a PersistentVolumeClaim per pod
 * (spec.queue with persistent storage). Same name and pod as the Deployment would have.
 * - Rolling updates replace one pod at a time and keep its claim, so the queue survives.
 * - Parallel pod management: pods start and stop together, as the Deployment's did;
 *   ordering buys nothing here (no pod depends on another).
 * - The claims are kept when the StatefulSet is scaled down or deleted
 *   (persistentVolumeClaimRetentionPolicy Retain): a claim may still hold mail, and the
 *   operator never deletes one.
 */
export function buildStatefulSet(relay: SmtpRelay, config: RelayConfig, inputs: DeploymentInputs): StatefulSet {
  const q = relay.spec.queue;
  if (!q) throw new Error('buildStatefulSet: spec.queue is not set');
  const names = childNames(relay);
  const claimLabels = standardLabels(relay, { [LABEL_COMPONENT]: 'relay' });
  const spec: V1StatefulSetSpec = {
    replicas: inputs.replicas ?? relay.spec.replicas,
    revisionHistoryLimit: 5,
    // The headless Service: pod DNS names, and the siblings' addresses for the peer channel.
    serviceName: names.peersService,
    podManagementPolicy: 'Parallel',
    selector: { matchLabels: selectorLabels(relay) },
    updateStrategy: { type: 'RollingUpdate', rollingUpdate: { partition: 0 } },
    persistentVolumeClaimRetentionPolicy: { whenDeleted: 'Retain', whenScaled: 'Retain' },
    template: podTemplate(relay, config, inputs, 'controller-revision-hash'),
    volumeClaimTemplates: [
      {
        apiVersion: 'v1',
        kind: 'PersistentVolumeClaim',
        metadata: { name: SPOOL_CLAIM_TEMPLATE, labels: claimLabels },
        spec: {
          accessModes: ['ReadWriteOnce'],
          resources: { requests: { storage: q.storage.size } },
          volumeMode: 'Filesystem',
          ...(q.storage.storageClassName ? { storageClassName: q.storage.storageClassName } : {}),
        },
      },
    ],
  };
  return { apiVersion: 'apps/v1', kind: 'StatefulSet', metadata: childMetadata(relay, names.deployment), spec };
}

/** The relay pod; `revisionLabel` is the label its controller puts on each revision's pods (topology spread counts within one). */
function podTemplate(relay: SmtpRelay, config: RelayConfig, inputs: DeploymentInputs, revisionLabel: string): V1PodTemplateSpec {
  const s = relay.spec;
  const names = childNames(relay);
  const { volumes: vols, mounts } = volumes(relay, config);
  const podLabels = standardLabels(relay, { [LABEL_COMPONENT]: 'relay' });
  const podAnnotations = sortedRecord({ ...userAnnotations(s.podAnnotations), [ANNOTATION_RESTART_HASH]: restartHash(config) });
  const template: V1PodTemplateSpec = {
    metadata: { labels: podLabels, annotations: podAnnotations },
    spec: {
      serviceAccountName: names.serviceAccount,
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      terminationGracePeriodSeconds: POD_TERMINATION_GRACE_SECONDS,
      securityContext: {
        runAsNonRoot: true,
        runAsUser: RELAY_UID,
        runAsGroup: RELAY_GID,
        fsGroup: RELAY_GID,
        seccompProfile: { type: 'RuntimeDefault' },
      },
      containers: [
        {
          name: RELAY_CONTAINER_NAME,
          image: inputs.image,
          imagePullPolicy: inputs.imagePullPolicy ?? 'IfNotPresent',
          args: ['relay', 'serve', '--config', CONFIG_FILE],
          ports: containerPorts(config),
          resources: {
            requests: sortedRecord(quantities(s.resources.requests)),
            limits: sortedRecord(quantities(s.resources.limits)),
          },
          readinessProbe: {
            httpGet: { path: HEALTH_PATH_READY, port: PORT_NAME_METRICS, scheme: 'HTTP' },
            periodSeconds: 5,
            timeoutSeconds: 2,
            failureThreshold: 2,
            successThreshold: 1,
          },
          livenessProbe: {
            httpGet: { path: HEALTH_PATH_LIVE, port: PORT_NAME_METRICS, scheme: 'HTTP' },
            initialDelaySeconds: 10,
            periodSeconds: 10,
            timeoutSeconds: 3,
            failureThreshold: 3,
            successThreshold: 1,
          },
          securityContext: {
            runAsNonRoot: true,
            runAsUser: RELAY_UID,
            runAsGroup: RELAY_GID,
            allowPrivilegeEscalation: false,
            privileged: false,
            readOnlyRootFilesystem: true,
            capabilities: { drop: ['ALL'] },
            seccompProfile: { type: 'RuntimeDefault' },
          },
          volumeMounts: mounts,
          terminationMessagePolicy: 'FallbackToLogsOnError',
        },
      ],
      volumes: vols,
      topologySpreadConstraints: [
        {
          maxSkew: 1,
          topologyKey: 'kubernetes.io/hostname',
          whenUnsatisfiable: 'ScheduleAnyway',
          labelSelector: { matchLabels: selectorLabels(relay) },
          matchLabelKeys: [revisionLabel],
        },
        {
          maxSkew: 1,
          topologyKey: 'topology.kubernetes.io/zone',
          whenUnsatisfiable: 'ScheduleAnyway',
          labelSelector: { matchLabels: selectorLabels(relay) },
          matchLabelKeys: [revisionLabel],
        },
      ],
    },
  };
  const podSpec = template.spec!;
  if (s.nodeSelector && Object.keys(s.nodeSelector).length > 0) podSpec.nodeSelector = sortedRecord(s.nodeSelector);
  // Empty strings ("key: ''" with Exists = every taint) are not stored by the server
  // (omitempty); sent anyway, the applier would see a difference on every reconcile.
  if (s.tolerations && s.tolerations.length > 0) {
    podSpec.tolerations = s.tolerations.map((t) => Object.fromEntries(Object.entries(t).filter(([, v]) => v !== '' && v !== undefined)));
  }
  if (s.priorityClassName) podSpec.priorityClassName = s.priorityClassName;
  // A queue volume is made writable through fsGroup; re-labelling every file of a large
  // spool at each start would delay the pod, so only when the volume's root differs.
  if (s.queue) podSpec.securityContext!.fsGroupChangePolicy = 'OnRootMismatch';
  return template;
}

/** Quantities as the server stores them (the CRD allows integers too: `cpu: 1`), so applies converge. */
function quantities(list: Record<string, string | number> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(list ?? {})) out[k] = canonicalQuantity(v);
  return out;
}
