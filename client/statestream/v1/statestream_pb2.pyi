from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CellType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CELL_TYPE_UNSPECIFIED: _ClassVar[CellType]
    CELL_TYPE_LSTM: _ClassVar[CellType]
    CELL_TYPE_GRU: _ClassVar[CellType]
    CELL_TYPE_SIMPLE_RNN: _ClassVar[CellType]
CELL_TYPE_UNSPECIFIED: CellType
CELL_TYPE_LSTM: CellType
CELL_TYPE_GRU: CellType
CELL_TYPE_SIMPLE_RNN: CellType

class LayerInfo(_message.Message):
    __slots__ = ("name", "cell", "units", "state_names")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    STATE_NAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    cell: CellType
    units: int
    state_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., cell: _Optional[_Union[CellType, str]] = ..., units: _Optional[int] = ..., state_names: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "features", "output_size", "layers", "max_timesteps", "sha256", "exported_with", "parity_max_abs_error", "version", "is_default")
    class ExportedWithEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MAX_TIMESTEPS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_WITH_FIELD_NUMBER: _ClassVar[int]
    PARITY_MAX_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    features: int
    output_size: int
    layers: _containers.RepeatedCompositeFieldContainer[LayerInfo]
    max_timesteps: int
    sha256: str
    exported_with: _containers.ScalarMap[str, str]
    parity_max_abs_error: float
    version: int
    is_default: bool
    def __init__(self, name: _Optional[str] = ..., features: _Optional[int] = ..., output_size: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[LayerInfo, _Mapping]]] = ..., max_timesteps: _Optional[int] = ..., sha256: _Optional[str] = ..., exported_with: _Optional[_Mapping[str, str]] = ..., parity_max_abs_error: _Optional[float] = ..., version: _Optional[int] = ..., is_default: _Optional[bool] = ...) -> None: ...

class LayerState(_message.Message):
    __slots__ = ("layer", "h", "c", "h_raw", "c_raw")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    H_FIELD_NUMBER: _ClassVar[int]
    C_FIELD_NUMBER: _ClassVar[int]
    H_RAW_FIELD_NUMBER: _ClassVar[int]
    C_RAW_FIELD_NUMBER: _ClassVar[int]
    layer: str
    h: _containers.RepeatedScalarFieldContainer[float]
    c: _containers.RepeatedScalarFieldContainer[float]
    h_raw: bytes
    c_raw: bytes
    def __init__(self, layer: _Optional[str] = ..., h: _Optional[_Iterable[float]] = ..., c: _Optional[_Iterable[float]] = ..., h_raw: _Optional[bytes] = ..., c_raw: _Optional[bytes] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("model", "session_id", "initial_states", "idle_timeout_seconds", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATES_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    session_id: str
    initial_states: _containers.RepeatedCompositeFieldContainer[LayerState]
    idle_timeout_seconds: float
    version: int
    def __init__(self, model: _Optional[str] = ..., session_id: _Optional[str] = ..., initial_states: _Optional[_Iterable[_Union[LayerState, _Mapping]]] = ..., idle_timeout_seconds: _Optional[float] = ..., version: _Optional[int] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session_id", "model", "idle_timeout_seconds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: ModelInfo
    idle_timeout_seconds: float
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., idle_timeout_seconds: _Optional[float] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("step_count",)
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    step_count: int
    def __init__(self, step_count: _Optional[int] = ...) -> None: ...

class SessionState(_message.Message):
    __slots__ = ("session_id", "model", "layers", "step_count", "last_sequence_number", "model_version", "model_sha256")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerState]
    step_count: int
    last_sequence_number: int
    model_version: int
    model_sha256: str
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerState, _Mapping]]] = ..., step_count: _Optional[int] = ..., last_sequence_number: _Optional[int] = ..., model_version: _Optional[int] = ..., model_sha256: _Optional[str] = ...) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ("session_id", "raw_output")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RAW_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    raw_output: bool
    def __init__(self, session_id: _Optional[str] = ..., raw_output: _Optional[bool] = ...) -> None: ...

class GetStateResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: SessionState
    def __init__(self, state: _Optional[_Union[SessionState, _Mapping]] = ...) -> None: ...

class SetStateRequest(_message.Message):
    __slots__ = ("session_id", "layers", "step_count", "last_sequence_number")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerState]
    step_count: int
    last_sequence_number: int
    def __init__(self, session_id: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerState, _Mapping]]] = ..., step_count: _Optional[int] = ..., last_sequence_number: _Optional[int] = ...) -> None: ...

class SetStateResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: SessionState
    def __init__(self, state: _Optional[_Union[SessionState, _Mapping]] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "input", "return_sequences", "return_state", "sequence_number", "model", "open_if_missing", "input_raw", "raw_output")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    RETURN_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    RETURN_STATE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OPEN_IF_MISSING_FIELD_NUMBER: _ClassVar[int]
    INPUT_RAW_FIELD_NUMBER: _ClassVar[int]
    RAW_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    input: _containers.RepeatedScalarFieldContainer[float]
    return_sequences: bool
    return_state: bool
    sequence_number: int
    model: str
    open_if_missing: bool
    input_raw: bytes
    raw_output: bool
    def __init__(self, session_id: _Optional[str] = ..., input: _Optional[_Iterable[float]] = ..., return_sequences: _Optional[bool] = ..., return_state: _Optional[bool] = ..., sequence_number: _Optional[int] = ..., model: _Optional[str] = ..., open_if_missing: _Optional[bool] = ..., input_raw: _Optional[bytes] = ..., raw_output: _Optional[bool] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("session_id", "output", "rows", "states", "step_count", "sequence_number", "replayed", "output_raw")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_RAW_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    output: _containers.RepeatedScalarFieldContainer[float]
    rows: int
    states: _containers.RepeatedCompositeFieldContainer[LayerState]
    step_count: int
    sequence_number: int
    replayed: bool
    output_raw: bytes
    def __init__(self, session_id: _Optional[str] = ..., output: _Optional[_Iterable[float]] = ..., rows: _Optional[int] = ..., states: _Optional[_Iterable[_Union[LayerState, _Mapping]]] = ..., step_count: _Optional[int] = ..., sequence_number: _Optional[int] = ..., replayed: _Optional[bool] = ..., output_raw: _Optional[bytes] = ...) -> None: ...

class StreamStepsRequest(_message.Message):
    __slots__ = ("step",)
    STEP_FIELD_NUMBER: _ClassVar[int]
    step: StepRequest
    def __init__(self, step: _Optional[_Union[StepRequest, _Mapping]] = ...) -> None: ...

class StreamStepsResponse(_message.Message):
    __slots__ = ("step", "error", "session_id", "sequence_number")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    step: StepResponse
    error: Error
    session_id: str
    sequence_number: int
    def __init__(self, step: _Optional[_Union[StepResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., session_id: _Optional[str] = ..., sequence_number: _Optional[int] = ...) -> None: ...

class StepFrameRequest(_message.Message):
    __slots__ = ("model", "session_ids", "inputs", "timesteps", "return_sequences", "return_state", "open_if_missing", "sequence_numbers", "inputs_raw", "raw_output")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TIMESTEPS_FIELD_NUMBER: _ClassVar[int]
    RETURN_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    RETURN_STATE_FIELD_NUMBER: _ClassVar[int]
    OPEN_IF_MISSING_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBERS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_RAW_FIELD_NUMBER: _ClassVar[int]
    RAW_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    model: str
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    inputs: _containers.RepeatedScalarFieldContainer[float]
    timesteps: int
    return_sequences: bool
    return_state: bool
    open_if_missing: bool
    sequence_numbers: _containers.RepeatedScalarFieldContainer[int]
    inputs_raw: bytes
    raw_output: bool
    def __init__(self, model: _Optional[str] = ..., session_ids: _Optional[_Iterable[str]] = ..., inputs: _Optional[_Iterable[float]] = ..., timesteps: _Optional[int] = ..., return_sequences: _Optional[bool] = ..., return_state: _Optional[bool] = ..., open_if_missing: _Optional[bool] = ..., sequence_numbers: _Optional[_Iterable[int]] = ..., inputs_raw: _Optional[bytes] = ..., raw_output: _Optional[bool] = ...) -> None: ...

class FrameEntryError(_message.Message):
    __slots__ = ("index", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    error: Error
    def __init__(self, index: _Optional[int] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class StepFrameResponse(_message.Message):
    __slots__ = ("outputs", "rows", "step_counts", "errors", "states", "outputs_raw")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_RAW_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedScalarFieldContainer[float]
    rows: int
    step_counts: _containers.RepeatedScalarFieldContainer[int]
    errors: _containers.RepeatedCompositeFieldContainer[FrameEntryError]
    states: _containers.RepeatedCompositeFieldContainer[LayerState]
    outputs_raw: bytes
    def __init__(self, outputs: _Optional[_Iterable[float]] = ..., rows: _Optional[int] = ..., step_counts: _Optional[_Iterable[int]] = ..., errors: _Optional[_Iterable[_Union[FrameEntryError, _Mapping]]] = ..., states: _Optional[_Iterable[_Union[LayerState, _Mapping]]] = ..., outputs_raw: _Optional[bytes] = ...) -> None: ...

class StreamFramesRequest(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: StepFrameRequest
    def __init__(self, frame: _Optional[_Union[StepFrameRequest, _Mapping]] = ...) -> None: ...

class StreamFramesResponse(_message.Message):
    __slots__ = ("frame", "error")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    frame: StepFrameResponse
    error: Error
    def __init__(self, frame: _Optional[_Union[StepFrameResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class OpenGroupRequest(_message.Message):
    __slots__ = ("model", "group_id", "size", "session_ids", "idle_timeout_seconds", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    group_id: str
    size: int
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    idle_timeout_seconds: float
    version: int
    def __init__(self, model: _Optional[str] = ..., group_id: _Optional[str] = ..., size: _Optional[int] = ..., session_ids: _Optional[_Iterable[str]] = ..., idle_timeout_seconds: _Optional[float] = ..., version: _Optional[int] = ...) -> None: ...

class OpenGroupResponse(_message.Message):
    __slots__ = ("group_id", "session_ids", "model", "idle_timeout_seconds")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    model: ModelInfo
    idle_timeout_seconds: float
    def __init__(self, group_id: _Optional[str] = ..., session_ids: _Optional[_Iterable[str]] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., idle_timeout_seconds: _Optional[float] = ...) -> None: ...

class StepGroupRequest(_message.Message):
    __slots__ = ("group_id", "inputs_raw", "inputs", "timesteps", "masked", "sequence_number", "return_sequences", "raw_output")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_RAW_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TIMESTEPS_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    RETURN_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    RAW_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    inputs_raw: bytes
    inputs: _containers.RepeatedScalarFieldContainer[float]
    timesteps: int
    masked: _containers.RepeatedScalarFieldContainer[int]
    sequence_number: int
    return_sequences: bool
    raw_output: bool
    def __init__(self, group_id: _Optional[str] = ..., inputs_raw: _Optional[bytes] = ..., inputs: _Optional[_Iterable[float]] = ..., timesteps: _Optional[int] = ..., masked: _Optional[_Iterable[int]] = ..., sequence_number: _Optional[int] = ..., return_sequences: _Optional[bool] = ..., raw_output: _Optional[bool] = ...) -> None: ...

class StepGroupResponse(_message.Message):
    __slots__ = ("group_id", "outputs_raw", "outputs", "rows", "step_count", "sequence_number", "replayed")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_RAW_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    outputs_raw: bytes
    outputs: _containers.RepeatedScalarFieldContainer[float]
    rows: int
    step_count: int
    sequence_number: int
    replayed: bool
    def __init__(self, group_id: _Optional[str] = ..., outputs_raw: _Optional[bytes] = ..., outputs: _Optional[_Iterable[float]] = ..., rows: _Optional[int] = ..., step_count: _Optional[int] = ..., sequence_number: _Optional[int] = ..., replayed: _Optional[bool] = ...) -> None: ...

class CloseGroupRequest(_message.Message):
    __slots__ = ("group_id", "keep_sessions")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    KEEP_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    keep_sessions: bool
    def __init__(self, group_id: _Optional[str] = ..., keep_sessions: _Optional[bool] = ...) -> None: ...

class CloseGroupResponse(_message.Message):
    __slots__ = ("step_count", "closed_sessions")
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    step_count: int
    closed_sessions: int
    def __init__(self, step_count: _Optional[int] = ..., closed_sessions: _Optional[int] = ...) -> None: ...

class MigrateSessionRequest(_message.Message):
    __slots__ = ("session_id", "version")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    version: int
    def __init__(self, session_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class MigrateSessionResponse(_message.Message):
    __slots__ = ("state", "from_version")
    STATE_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    state: SessionState
    from_version: int
    def __init__(self, state: _Optional[_Union[SessionState, _Mapping]] = ..., from_version: _Optional[int] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class SessionSummary(_message.Message):
    __slots__ = ("session_id", "model_version", "step_count")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model_version: int
    step_count: int
    def __init__(self, session_id: _Optional[str] = ..., model_version: _Optional[int] = ..., step_count: _Optional[int] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionSummary]
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionSummary, _Mapping]]] = ...) -> None: ...
