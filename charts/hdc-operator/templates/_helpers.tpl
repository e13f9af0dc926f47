{{/* Names and labels. */}}
{{- define "hdc-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hdc-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hdc-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hdc-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hdc-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "hdc-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: hd-compute-toolkit
{{- end }}

{{- define "hdc-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hdc-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hdc-operator.peeringName" -}}
{{- default (include "hdc-operator.fullname" .) .Values.peering.name }}
{{- end }}

{{/*
The operator's namespaced permissions: every API call it makes, and nothing else (derived from the code;
tests/test_chart.py derives the child kinds' rules from hdc_operator.apply.CHILD_KINDS and fails when they differ).
  kopf watch caches and events (handlers.py: kopf.index / kopf.on.event)      -> list, watch
  kopf's finalizer handling (hdcompute.io/operator; kopf removes it on delete) -> patch hdcworkloads
  status (apply.KubeApi.patch_status, merge patch of the status subresource)  -> patch hdcworkloads/status
  autoscaling mode operator (KubeApi.patch_scale / patch_annotations: spec.replicas through the scale
  subresource, the scaler's history annotation)                                -> patch hdcworkloads/scale, hdcworkloads
  children (apply.KubeApi.apply: server-side apply, which creates when absent) -> create, patch
  pruning (apply.KubeApi.delete; PersistentVolumeClaims are never pruned)     -> delete
  ServiceMonitor/PrometheusRule are not watched (their CRDs may vanish): read by name (reconcile.py)   -> get
  pods: read for status (InsufficientGPU, ImagePullBackOff...)                -> list, watch
  Events (apply.KubeApi.post_event; kopf's own event posting is off)          -> create events
  kopf peering keep-alives: KopfPeering of each served namespace (ClusterKopfPeering when cluster-wide, in
    the ClusterRole of rbac.yaml); the resync loop reads it to stay idle while paused -> get, list, watch, patch
*/}}
{{- define "hdc-operator.namespacedRules" -}}
- apiGroups: [hdcompute.io]
  resources: [hdcworkloads]
  verbs: [list, watch, patch]
- apiGroups: [hdcompute.io]
  resources: [hdcworkloads/status, hdcworkloads/scale]
  verbs: [patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors, prometheusrules]
  verbs: [get, create, patch, delete]
- apiGroups: [postgresql.cnpg.io]
  resources: [clusters]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if and .Values.peering.enabled .Values.watchNamespaces }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end }}
