from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("unit_id", "surface", "num_items", "context", "seed_item_ids", "exclude_item_ids")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SEED_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    unit_id: str
    surface: str
    num_items: int
    context: _containers.ScalarMap[str, float]
    seed_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unit_id: _Optional[str] = ..., surface: _Optional[str] = ..., num_items: _Optional[int] = ..., context: _Optional[_Mapping[str, float]] = ..., seed_item_ids: _Optional[_Iterable[str]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "creator_id", "position", "score", "propensity", "emerging")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CREATOR_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    EMERGING_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    creator_id: str
    position: int
    score: float
    propensity: float
    emerging: bool
    def __init__(self, item_id: _Optional[str] = ..., creator_id: _Optional[str] = ..., position: _Optional[int] = ..., score: _Optional[float] = ..., propensity: _Optional[float] = ..., emerging: _Optional[bool] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("event_id", "experiment", "variant", "policy", "policy_version", "items", "slate_probability", "index_version")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SLATE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    experiment: str
    variant: str
    policy: str
    policy_version: str
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    slate_probability: float
    index_version: str
    def __init__(self, event_id: _Optional[str] = ..., experiment: _Optional[str] = ..., variant: _Optional[str] = ..., policy: _Optional[str] = ..., policy_version: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., slate_probability: _Optional[float] = ..., index_version: _Optional[str] = ...) -> None: ...

class RewardRequest(_message.Message):
    __slots__ = ("event_id", "item_id", "value", "reward_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REWARD_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    item_id: str
    value: float
    reward_id: str
    def __init__(self, event_id: _Optional[str] = ..., item_id: _Optional[str] = ..., value: _Optional[float] = ..., reward_id: _Optional[str] = ...) -> None: ...

class RewardResponse(_message.Message):
    __slots__ = ("accepted", "duplicate", "late")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    late: bool
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., late: _Optional[bool] = ...) -> None: ...

class RewardOutcome(_message.Message):
    __slots__ = ("index", "code", "message", "result")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    index: int
    code: int
    message: str
    result: RewardResponse
    def __init__(self, index: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., result: _Optional[_Union[RewardResponse, _Mapping]] = ...) -> None: ...

class RewardStreamResponse(_message.Message):
    __slots__ = ("outcomes", "accepted", "rejected")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[RewardOutcome]
    accepted: int
    rejected: int
    def __init__(self, outcomes: _Optional[_Iterable[_Union[RewardOutcome, _Mapping]]] = ..., accepted: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VariantInfo(_message.Message):
    __slots__ = ("name", "weight", "policy", "policy_version", "params_json", "paused")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    policy: str
    policy_version: int
    params_json: str
    paused: bool
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ..., policy: _Optional[str] = ..., policy_version: _Optional[int] = ..., params_json: _Optional[str] = ..., paused: _Optional[bool] = ...) -> None: ...

class ExperimentInfo(_message.Message):
    __slots__ = ("name", "surfaces", "salt", "candidates", "context_keys", "variants")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SURFACES_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_KEYS_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    surfaces: _containers.RepeatedScalarFieldContainer[str]
    salt: str
    candidates: int
    context_keys: _containers.RepeatedScalarFieldContainer[str]
    variants: _containers.RepeatedCompositeFieldContainer[VariantInfo]
    def __init__(self, name: _Optional[str] = ..., surfaces: _Optional[_Iterable[str]] = ..., salt: _Optional[str] = ..., candidates: _Optional[int] = ..., context_keys: _Optional[_Iterable[str]] = ..., variants: _Optional[_Iterable[_Union[VariantInfo, _Mapping]]] = ...) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments", "index_version", "config_version")
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentInfo]
    index_version: str
    config_version: str
    def __init__(self, experiments: _Optional[_Iterable[_Union[ExperimentInfo, _Mapping]]] = ..., index_version: _Optional[str] = ..., config_version: _Optional[str] = ...) -> None: ...

class SetVariantPausedRequest(_message.Message):
    __slots__ = ("experiment", "variant", "paused")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    variant: str
    paused: bool
    def __init__(self, experiment: _Optional[str] = ..., variant: _Optional[str] = ..., paused: _Optional[bool] = ...) -> None: ...

class SetVariantPausedResponse(_message.Message):
    __slots__ = ("paused",)
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    paused: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, paused: _Optional[_Iterable[str]] = ...) -> None: ...

class ReloadIndexRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class ReloadIndexResponse(_message.Message):
    __slots__ = ("index_version", "swapped")
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    SWAPPED_FIELD_NUMBER: _ClassVar[int]
    index_version: str
    swapped: bool
    def __init__(self, index_version: _Optional[str] = ..., swapped: _Optional[bool] = ...) -> None: ...

class GetCountersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCountersResponse(_message.Message):
    __slots__ = ("counters",)
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    counters: _containers.ScalarMap[str, int]
    def __init__(self, counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ReloadConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadConfigResponse(_message.Message):
    __slots__ = ("config_version", "changed")
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    config_version: str
    changed: bool
    def __init__(self, config_version: _Optional[str] = ..., changed: _Optional[bool] = ...) -> None: ...

class ExposeRequest(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...

class ExposeResponse(_message.Message):
    __slots__ = ("accepted", "duplicate")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ...) -> None: ...
