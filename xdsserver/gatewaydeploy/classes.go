package gatewaydeploy

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapply "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/goambient/goambient/xdsserver/model"
)

// Istio's controller names and classes (pilot/pkg/config/kube/gatewaycommon/classinfo.go).
const (
	// GatewayController is the controller of Istio's ingress class, "istio" (istiod's
	// PILOT_GATEWAY_API_CONTROLLER_NAME default). It is also istiod's field manager for the
	// objects it applies.
	GatewayController = "istio.io/gateway-controller"
	// MeshController is the controller of waypoint classes.
	MeshController = model.MeshController
	// IngressClassName and WaypointClassName are the classes istiod creates at start.
	IngressClassName  = "istio"
	WaypointClassName = model.WaypointClassName
	// FieldManager is the server-side apply field manager of everything this package writes,
	// istiod's.
	FieldManager = GatewayController
)

// classInfo is what a controller name means to the deployment controller, as istiod's
// ClassInfo.
type classInfo struct {
	controller   string
	description  string
	managedLabel string // value of gateway.istio.io/managed: the controller with '/' → '-'
	waypoint     bool   // the waypoint template, DisableNameSuffix
	serviceType  corev1.ServiceType
	// hostnameOnly: the Gateway's status reports the Service's hostname only (istiod's
	// AddressType Hostname); otherwise its cluster IPs and its hostname.
	hostnameOnly bool
}

var classInfos = map[string]classInfo{
	GatewayController: {controller: GatewayController, description: "The default Istio GatewayClass", managedLabel: "istio.io-gateway-controller",
		serviceType: corev1.ServiceTypeLoadBalancer, hostnameOnly: true},
	MeshController: {controller: MeshController, description: "The default Istio waypoint GatewayClass", managedLabel: model.ManagedByMesh,
		waypoint: true, serviceType: corev1.ServiceTypeClusterIP},
}

// builtinClasses are the classes istiod creates, and assumes when they do not exist.
var builtinClasses = map[string]string{IngressClassName: GatewayController, WaypointClassName: MeshController}

// classes creates the built-in GatewayClasses when they do not exist (a class a user made or
// changed is left as it is, as istiod's ClassController), and writes Accepted on every class
// of a known controller, as istiod's GatewayClass status collection.
type classes struct {
	gw  gwclient.Interface
	log *slog.Logger
}

// reconcile creates the missing built-in classes and writes the status of every class of
// ours; get reads a class from the informer's cache (nil when absent).
func (c *classes) reconcile(ctx context.Context, list []*gatewayv1.GatewayClass, get func(name string) *gatewayv1.GatewayClass) error {
	var errs []error
	for name, controller := range builtinClasses {
		if get(name) != nil {
			continue
		}
		info := classInfos[controller]
		gc := &gatewayv1.GatewayClass{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       gatewayv1.GatewayClassSpec{ControllerName: gatewayv1.GatewayController(controller), Description: &info.description},
		}
		_, err := c.gw.GatewayV1().GatewayClasses().Create(ctx, gc, metav1.CreateOptions{FieldManager: FieldManager})
		switch {
		case apierrors.IsAlreadyExists(err):
			c.log.Debug("GatewayClass created meanwhile by someone else", "class", name)
		case err != nil:
			errs = append(errs, fmt.Errorf("GatewayClass %s: %w", name, err))
		default:
			c.log.Info("GatewayClass created", "class", name, "controller", controller)
		}
	}
	for _, gc := range list {
		if _, ours := classInfos[string(gc.Spec.ControllerName)]; !ours || classAccepted(gc) {
			continue
		}
		cond := gwapply.GatewayClassStatus().WithConditions(condition(metav1.Condition{
			Type: string(gatewayv1.GatewayClassConditionStatusAccepted), Status: metav1.ConditionTrue,
			Reason: string(gatewayv1.GatewayClassReasonAccepted), Message: "Handled by Istio controller",
			ObservedGeneration: gc.Generation,
		}, gc.Status.Conditions, time.Now()))
		_, err := c.gw.GatewayV1().GatewayClasses().ApplyStatus(ctx, gwapply.GatewayClass(gc.Name).WithStatus(cond), metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("GatewayClass %s status: %w", gc.Name, err))
		}
	}
	return joinErrs(errs)
}

// classAccepted says the class's status already says Accepted for its generation.
func classAccepted(gc *gatewayv1.GatewayClass) bool {
	for _, c := range gc.Status.Conditions {
		if c.Type == string(gatewayv1.GatewayClassConditionStatusAccepted) {
			return c.Status == metav1.ConditionTrue && c.ObservedGeneration == gc.Generation && c.Message == "Handled by Istio controller"
		}
	}
	return false
}
