{{/* The CSI driver name: also cachefs.csi.DRIVER_NAME in the code; never change it on upgrade. */}}
{{- define "cachefs.driverName" -}}csi.cachefs.io{{- end -}}

{{- define "cachefs.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cachefs.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cachefs.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cachefs.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The mounter's image: its own override, else the chart's image. */}}
{{- define "cachefs.mounterImage" -}}
{{ .Values.mounter.image.repository | default .Values.image.repository }}:{{ .Values.mounter.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "cachefs.nodeSA" -}}
{{ .Values.serviceAccount.node.name | default (printf "%s-node" (include "cachefs.fullname" .)) }}
{{- end -}}

{{- define "cachefs.controllerSA" -}}
{{ .Values.serviceAccount.controller.name | default (printf "%s-controller" (include "cachefs.fullname" .)) }}
{{- end -}}

{{/* S3 flags shared by the node plugin and the controller. */}}
{{- define "cachefs.s3Args" -}}
{{- with .Values.s3.endpointUrl }}
- --endpoint-url={{ . }}
{{- end }}
{{- with .Values.s3.region }}
- --region={{ . }}
{{- end }}
- --addressing-style={{ .Values.s3.addressingStyle }}
{{- end -}}
